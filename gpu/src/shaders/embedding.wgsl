// out[t, c] = table[ids[t], c]. Ids beyond the vocabulary give a zero row (the host checks ids
// it uploads; ids made on the device, e.g. by argmax, are in range by construction).
struct Params {
    n_ids: u32,
    hidden: u32,
    vocab: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let idx = group_id(wid, nwg) * WG + tid;
    if (idx >= p.n_ids * p.hidden) {
        return;
    }
    let t = idx / p.hidden;
    let c = idx % p.hidden;
    let id = ids[t];
    var v = 0.0;
    if (id < p.vocab) {
        v = table[id * p.hidden + c];
    }
    y[idx] = v;
}
