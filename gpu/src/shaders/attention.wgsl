// Scaled dot-product attention of a block of q_len queries over a KV cache, with grouped-query
// heads. q is [q_len, heads, d]; the caches are [capacity, kv_heads, d] of which the first
// kv_len rows are valid; the query s sits at absolute position offset + s and, when causal,
// sees keys 0..=offset + s. One workgroup per (query, head) walks the keys in chunks of 64 with
// an online softmax (running max and sum, accumulator rescaled per chunk), so context length is
// bounded by the cache, not by workgroup memory. d <= 256.
struct Params {
    q_len: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    kv_len: u32,
    offset: u32,
    causal: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 64u;
const PER: u32 = 4u; // 256 / WG dims of the output per thread
const NEG: f32 = -3.4028235e38;

var<workgroup> qs: array<f32, 256>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let item = group_id(wid, nwg);
    if (item >= p.q_len * p.heads) {
        return;
    }
    let s = item / p.heads;
    let h = item % p.heads;
    let kvh = h / (p.heads / p.kv_heads);
    let d = p.head_dim;
    let kv_row = p.kv_heads * d;
    let kv_col = kvh * d;
    for (var i = tid; i < d; i = i + WG) {
        qs[i] = q[item * d + i] * p.scale;
    }
    workgroupBarrier();

    var last = p.kv_len;
    if (p.causal != 0u) {
        last = min(p.kv_len, p.offset + s + 1u);
    }
    var m_run = NEG;
    var l_run = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);

    for (var base = 0u; base < last; base = base + WG) {
        let j = base + tid;
        var score = NEG;
        if (j < last) {
            var dot = 0.0;
            let kb = j * kv_row + kv_col;
            for (var i = 0u; i < d; i = i + 1u) {
                dot = dot + qs[i] * k[kb + i];
            }
            score = dot;
        }
        red[tid] = score;
        workgroupBarrier();
        for (var st = WG / 2u; st > 0u; st = st / 2u) {
            if (tid < st) {
                red[tid] = max(red[tid], red[tid + st]);
            }
            workgroupBarrier();
        }
        let m_new = max(m_run, red[0]);
        workgroupBarrier();
        var pj = 0.0;
        if (j < last) {
            pj = exp(score - m_new);
        }
        ps[tid] = pj;
        red[tid] = pj;
        workgroupBarrier();
        for (var st = WG / 2u; st > 0u; st = st / 2u) {
            if (tid < st) {
                red[tid] = red[tid] + red[tid + st];
            }
            workgroupBarrier();
        }
        let alpha = exp(m_run - m_new);
        l_run = l_run * alpha + red[0];
        m_run = m_new;
        let n_in = min(WG, last - base);
        for (var r = 0u; r < PER; r = r + 1u) {
            let dd = tid + r * WG;
            if (dd < d) {
                var a = acc[r] * alpha;
                for (var jj = 0u; jj < n_in; jj = jj + 1u) {
                    a = a + ps[jj] * v[(base + jj) * kv_row + kv_col + dd];
                }
                acc[r] = a;
            }
        }
        workgroupBarrier();
    }
    let inv = 1.0 / l_run;
    for (var r = 0u; r < PER; r = r + 1u) {
        let dd = tid + r * WG;
        if (dd < d) {
            y[item * d + dd] = acc[r] * inv;
        }
    }
}
