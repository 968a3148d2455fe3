// Element-wise kernels over flat f32 arrays: residual add, a bias row broadcast over rows, and
// SwiGLU (silu(gate) * up).
struct Params {
    len: u32,
    cols: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 256u;

fn index(wid: vec3<u32>, nwg: vec3<u32>, tid: u32) -> u32 {
    return group_id(wid, nwg) * WG + tid;
}

@compute @workgroup_size(256, 1, 1)
fn add(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let i = index(wid, nwg, tid);
    if (i < p.len) {
        y[i] = a[i] + b[i];
    }
}

// b is one row of `cols` values added to every row of a (Linear bias, e.g. Qwen2's q/k/v).
@compute @workgroup_size(256, 1, 1)
fn add_row(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let i = index(wid, nwg, tid);
    if (i < p.len) {
        y[i] = a[i] + b[i % p.cols];
    }
}

// a = gate, b = up.
@compute @workgroup_size(256, 1, 1)
fn swiglu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let i = index(wid, nwg, tid);
    if (i < p.len) {
        let g = a[i];
        y[i] = g / (1.0 + exp(-g)) * b[i];
    }
}
