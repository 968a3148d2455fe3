// Row-wise argmax to u32 ids; ties go to the lowest index (as candle's and torch's argmax do on
// CPU). One workgroup per row, so a decode step can sample greedily on the device and hand back
// only the token id.
struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = group_id(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var bv = -3.4028235e38;
    var bi = 0xffffffffu;
    // Each thread walks its indices in increasing order, so a strict `>` keeps the lowest.
    for (var i = tid; i < p.cols; i = i + WG) {
        let v = x[base + i];
        if (v > bv || bi == 0xffffffffu) {
            bv = v;
            bi = i;
        }
    }
    best_v[tid] = bv;
    best_i[tid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (tid < s) {
            let ov = best_v[tid + s];
            let oi = best_i[tid + s];
            let mv = best_v[tid];
            let mi = best_i[tid];
            let take = oi != 0xffffffffu && (mi == 0xffffffffu || ov > mv || (ov == mv && oi < mi));
            if (take) {
                best_v[tid] = ov;
                best_i[tid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (tid == 0u) {
        ids[row] = best_i[0];
    }
}
