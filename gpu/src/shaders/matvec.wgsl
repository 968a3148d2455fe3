// y[n] = sum_k x[k] * B[k,n] for a [k,n] matrix: one thread per output column, so a warp reads
// a contiguous stretch of each B row; x is staged through workgroup memory in chunks.
struct Params {
    k: u32,
    n: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> xs: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let col = group_id(wid, nwg) * WG + tid;
    var acc = 0.0;
    for (var base = 0u; base < p.k; base = base + WG) {
        let i = base + tid;
        var xv = 0.0;
        if (i < p.k) {
            xv = x[i];
        }
        xs[tid] = xv;
        workgroupBarrier();
        let len = min(WG, p.k - base);
        if (col < p.n) {
            for (var j = 0u; j < len; j = j + 1u) {
                acc = acc + xs[j] * b[(base + j) * p.n + col];
            }
        }
        workgroupBarrier();
    }
    if (col < p.n) {
        y[col] = acc;
    }
}
