// y[n] = sum_k x[k] * W[n,k]: the decode-step Linear (one token, weight in its stored [n,k]
// layout). One workgroup per output row: 256 threads read the row with unit stride, then a
// tree reduction. The grid is flattened over x and y because n (a vocabulary) can exceed the
// 65535 workgroups allowed per dimension.
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

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.n) {
        return;
    }
    let base = row * p.k;
    var acc = 0.0;
    for (var i = tid; i < p.k; i = i + WG) {
        acc = acc + x[i] * w[base + i];
    }
    red[tid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (tid < s) {
            red[tid] = red[tid] + red[tid + s];
        }
        workgroupBarrier();
    }
    if (tid == 0u) {
        y[row] = red[0];
    }
}
