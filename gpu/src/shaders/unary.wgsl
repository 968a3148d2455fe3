// One-input kernels: SiLU (the router MLP's activation) and a strided column copy that places
// x [rows, cols] at column `col_offset` of y [rows, out_cols] (concatenation along the last
// dimension, one dispatch per input).
struct Params {
    rows: u32,
    cols: u32,
    out_cols: u32,
    col_offset: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 256u;

fn index(wid: vec3<u32>, nwg: vec3<u32>, tid: u32) -> u32 {
    return group_id(wid, nwg) * WG + tid;
}

@compute @workgroup_size(256, 1, 1)
fn silu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let i = index(wid, nwg, tid);
    if (i < p.rows * p.cols) {
        let v = x[i];
        y[i] = v / (1.0 + exp(-v));
    }
}

@compute @workgroup_size(256, 1, 1)
fn copy_cols(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let i = index(wid, nwg, tid);
    if (i < p.rows * p.cols) {
        let r = i / p.cols;
        let c = i % p.cols;
        y[r * p.out_cols + p.col_offset + c] = x[i];
    }
}
