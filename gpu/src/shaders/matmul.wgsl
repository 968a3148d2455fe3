// C[m,n] = A[m,k] x B, with B either [k,n] (b_trans = 0) or [n,k] (b_trans = 1, the layout of
// a Linear weight, so C = A W^T). 16x16 output tile per workgroup, one output per thread, the
// K dimension walked in 16-wide tiles staged in workgroup memory. Edges are zero-padded so any
// m, k, n works.
struct Params {
    m: u32,
    k: u32,
    n: u32,
    b_trans: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const T: u32 = 16u;

var<workgroup> ta: array<array<f32, 16>, 16>;
var<workgroup> tb: array<array<f32, 16>, 16>;

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * T + lid.y;
    let col = wid.x * T + lid.x;
    var acc = 0.0;
    let tiles = (p.k + T - 1u) / T;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let ka = t * T + lid.x;
        var av = 0.0;
        if (row < p.m && ka < p.k) {
            av = a[row * p.k + ka];
        }
        ta[lid.y][lid.x] = av;
        var bv = 0.0;
        if (p.b_trans == 0u) {
            // Element (t*T + lid.y, col) of a [k,n] matrix: neighbours in x read neighbours.
            let kb = t * T + lid.y;
            if (kb < p.k && col < p.n) {
                bv = b[kb * p.n + col];
            }
            tb[lid.y][lid.x] = bv;
        } else {
            // Element (n = wid.x*T + lid.y, k = t*T + lid.x) of a [n,k] matrix, stored
            // transposed so that neighbours in x still read neighbouring addresses.
            let nb = wid.x * T + lid.y;
            let kb = t * T + lid.x;
            if (nb < p.n && kb < p.k) {
                bv = b[nb * p.k + kb];
            }
            tb[lid.x][lid.y] = bv;
        }
        workgroupBarrier();
        for (var i = 0u; i < T; i = i + 1u) {
            acc = acc + ta[lid.y][i] * tb[i][lid.x];
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        c[row * p.n + col] = acc;
    }
}
