// C[m,n] = A[m,k] x B, with B either [k,n] (b_trans = 0) or [n,k] (b_trans = 1, the layout of
// a Linear weight, so C = A W^T). Prefill-sized products: a workgroup of 16x16 threads owns a
// 64x64 block of C, each thread a 4x4 register block (rows lid.y + 16i, columns lid.x + 16j),
// and K is walked in 16-wide slices staged in workgroup memory, k-major, so the inner loop
// reads 4 + 4 values for 16 multiply-adds. Loads run along the contiguous dimension of each
// operand. Edges are zero-padded, so any m, k, n works.
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

const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> sa: array<array<f32, 64>, 16>; // [kk][row in tile]
var<workgroup> sb: array<array<f32, 64>, 16>; // [kk][col in tile]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i = i + 1u) {
        acc[i] = 0.0;
    }
    let tiles = (p.k + TK - 1u) / TK;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let k0 = t * TK;
        for (var e = 0u; e < 4u; e = e + 1u) {
            let idx = tid + e * 256u;
            // A slice: 64 rows x 16 k, neighbours along k.
            let ar = idx / TK;
            let ak = idx % TK;
            var av = 0.0;
            if (row0 + ar < p.m && k0 + ak < p.k) {
                av = a[(row0 + ar) * p.k + k0 + ak];
            }
            sa[ak][ar] = av;
            var bv = 0.0;
            if (p.b_trans == 0u) {
                // [k,n]: 16 k x 64 columns, neighbours along n.
                let bk = idx / TILE;
                let bc = idx % TILE;
                if (k0 + bk < p.k && col0 + bc < p.n) {
                    bv = b[(k0 + bk) * p.n + col0 + bc];
                }
                sb[bk][bc] = bv;
            } else {
                // [n,k]: 64 columns x 16 k, neighbours along k.
                let bc = idx / TK;
                let bk = idx % TK;
                if (col0 + bc < p.n && k0 + bk < p.k) {
                    bv = b[(col0 + bc) * p.k + k0 + bk];
                }
                sb[bk][bc] = bv;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            var ar: array<f32, 4>;
            var br: array<f32, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                ar[i] = sa[kk][lid.y + 16u * i];
                br[i] = sb[kk][lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i * 4u + j] = acc[i * 4u + j] + ar[i] * br[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let r = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + lid.x + 16u * j;
            if (r < p.m && col < p.n) {
                c[r * p.n + col] = acc[i * 4u + j];
            }
        }
    }
}
