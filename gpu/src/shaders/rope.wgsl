// Rotary position embedding, rotate-half convention (HF Llama / Qwen2): for i < d/2,
//   out[i]       = x[i] cos - x[i + d/2] sin
//   out[i + d/2] = x[i + d/2] cos + x[i] sin
// with the angle of position `offset + s`. cos/sin come from host-built tables
// [max_positions, d/2] rather than from WGSL cos/sin, whose accuracy Vulkan only bounds on
// [-pi, pi] while angles here reach thousands of radians. x is [seq, heads, d].
struct Params {
    seq: u32,
    heads: u32,
    head_dim: u32,
    offset: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> cos_t: array<f32>;
@group(0) @binding(2) var<storage, read> sin_t: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let idx = group_id(wid, nwg) * WG + tid;
    let half = p.head_dim / 2u;
    let total = p.seq * p.heads * half;
    if (idx >= total) {
        return;
    }
    let i = idx % half;
    let sh = idx / half;
    let s = sh / p.heads;
    let base = sh * p.head_dim;
    let t = (p.offset + s) * half + i;
    let c = cos_t[t];
    let sn = sin_t[t];
    let x1 = x[base + i];
    let x2 = x[base + i + half];
    y[base + i] = x1 * c - x2 * sn;
    y[base + i + half] = x2 * c + x1 * sn;
}
