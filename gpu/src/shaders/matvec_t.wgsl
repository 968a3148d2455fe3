// y[n] = sum_k x[k] * W[n,k]: the decode-step Linear (one token, weight in its stored [n,k]
// layout). A workgroup of 256 threads computes 8 rows, 32 lanes per row: the lanes of a row
// read 32 consecutive floats at a time (one 128-byte line per step), then reduce through
// workgroup memory in 5 steps. The grid is flattened over x and y because n (a vocabulary)
// can exceed the 65535 workgroups allowed per dimension.
struct Params {
    k: u32,
    n: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const ROWS: u32 = 8u;
const LANES: u32 = 32u;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let group = group_id(wid, nwg);
    let row = group * ROWS + tid / LANES;
    let lane = tid % LANES;
    var acc = 0.0;
    if (row < p.n) {
        let base = row * p.k;
        for (var i = lane; i < p.k; i = i + LANES) {
            acc = acc + x[i] * w[base + i];
        }
    }
    red[tid] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s = s / 2u) {
        if (lane < s) {
            red[tid] = red[tid] + red[tid + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.n) {
        y[row] = red[tid];
    }
}
