// Weighted mixing for fusion: y[e] = sum_i w_i * x_i[e] over N same-shaped inputs stacked as
// [N, len]. Weights are either global [N] (ensemble, layer-level coefficients) or per row
// [rows, N] (per-token router weights).
struct Params {
    n: u32,
    len: u32,
    cols: u32,
    per_row: u32,
}

@group(0) @binding(0) var<storage, read> xs: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let e = group_id(wid, nwg) * WG + tid;
    if (e >= p.len) {
        return;
    }
    var wbase = 0u;
    if (p.per_row != 0u) {
        wbase = (e / p.cols) * p.n;
    }
    var acc = 0.0;
    for (var i = 0u; i < p.n; i = i + 1u) {
        acc = acc + w[wbase + i] * xs[i * p.len + e];
    }
    y[e] = acc;
}
