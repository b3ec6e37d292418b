//! Balanced assignment of a burst of requests to deployments under capacity: the
//! request-level form of mixture-of-experts load balancing.
//!
//! A per-request router is greedy: under load, every request that "needs the good model"
//! goes to it, and its queue grows without bound. Mixture-of-experts layers meet the same
//! collapse and solve it by assigning a batch of tokens to experts under capacity: BASE
//! layers (Lewis et al., 2021) solve the linear assignment exactly, and Sinkhorn routing
//! (Clark et al., 2022, "Unified scaling laws for routed language models") solves its
//! entropic relaxation with a few scaling iterations. RouteBalance applies the idea to LLM
//! requests. Here a batch is `n` requests and `d` deployments, each request's utility on
//! each deployment (predicted score minus the policy's cost and latency terms), and each
//! deployment's free capacity. An [`Assigner`] gives each request one deployment, never
//! more requests to a deployment than its capacity, maximising the total utility; a
//! request left over when the capacities are full gets `None` (the caller queues or spills
//! it).
//!
//! * [`Exact`]: min-cost flow by successive shortest paths (Dijkstra with potentials) on
//!   source -> request -> deployment -> sink. Optimal; for small batches.
//! * [`Sinkhorn`]: entropic optimal transport with capacity inequalities (the scaling
//!   algorithm of Chizat et al., 2018, "Scaling algorithms for unbalanced optimal
//!   transport problems": a row update makes each request's mass 1, a column update
//!   scales a deployment down only when it is over capacity), with a "left out" column
//!   for the requests beyond every capacity, cooled from 8 epsilon to epsilon
//!   (epsilon scaling) and warm-started from the last batch's column prices. It is then
//!   rounded by those prices (the requests that lose most by not getting their best
//!   priced deployment first, each to its best priced deployment with room) and finished
//!   by swaps that raise the total. It fills greedily: where pairs are forbidden it may
//!   leave out a request that [`Exact`] would place.
//!
//! **Queue places** ([`queue_place_price`]): a deployment that is full may still take
//! requests into its queue, as long as they start soon enough. A queue place is priced by
//! how full the queue is, so under overload the places go to the requests that gain most
//! by waiting for that deployment and the others take free slots elsewhere at once,
//! instead of spilling whichever request happens to arrive when the queue is full. The
//! rule is drift-plus-penalty queueing control (Neely, 2010, "Stochastic network
//! optimization with application to communication and queueing systems"): the backlog
//! acts as the resource's price. The caller gives the places a column of their own, at
//! the utility minus the price.
//!
//! Pure logic, no I/O; the simulator (`routewise simulate`) and the gateway
//! (`dispatch.balance`) call it.

use serde::{Deserialize, Serialize};

/// The default price scale of a queue place ([`queue_place_price`]), chosen on validation
/// parts of train with `routewise simulate --validation` (BENCHMARKS.md).
pub const DEFAULT_QUEUE_PRICE: f64 = 0.02;

/// The price, in utility, of a queue place at a deployment that has `places` in all with
/// `taken` of them taken, for a batch of `batch` requests. The `k`-th place costs
/// `scale * k / (places - k + 1)`: small while the queue is short, unbounded as it fills.
/// The batch's places share one column, so each is priced as the middle one of those the
/// batch could take (`k = taken + ceil(m / 2)`, `m = min(batch, places - taken)`): exact
/// for a batch of one, an average for a larger one. `None` when no place is left.
pub fn queue_place_price(scale: f64, taken: usize, places: usize, batch: usize) -> Option<f64> {
    let m = batch.max(1).min(places.checked_sub(taken)?);
    let k = taken + m.div_ceil(2);
    (m > 0).then(|| scale * k as f64 / (places - k + 1) as f64)
}

/// Which solver assigns a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignerKind {
    Sinkhorn,
    Exact,
}

impl AssignerKind {
    pub fn build(self) -> Box<dyn Assigner> {
        match self {
            AssignerKind::Sinkhorn => Box::new(Sinkhorn::default()),
            AssignerKind::Exact => Box::new(Exact),
        }
    }
}

/// Assigns a batch of requests to deployments under capacity.
pub trait Assigner: Send {
    /// `utility` is row-major, `n` rows (requests) of `capacity.len()` columns
    /// (deployments); a non-finite utility forbids the pair. Writes each request's
    /// deployment to `out` (`None`: no room), using at most `capacity[j]` rows per column.
    /// [`Exact`] places as many requests as the capacities allow and, among those
    /// assignments, has the best total utility; [`Sinkhorn`] approximates it.
    fn assign(
        &mut self,
        utility: &[f64],
        n: usize,
        capacity: &[usize],
        out: &mut Vec<Option<usize>>,
    );
}

/// Sets `out` to `n` unassigned rows; the number of columns, or `None` for an empty or
/// malformed batch.
fn start(
    utility: &[f64],
    n: usize,
    capacity: &[usize],
    out: &mut Vec<Option<usize>>,
) -> Option<usize> {
    out.clear();
    out.resize(n, None);
    let d = capacity.len();
    (n > 0 && d > 0 && utility.len() >= n * d).then_some(d)
}

/// Exact assignment by min-cost flow.
#[derive(Debug, Default, Clone)]
pub struct Exact;

impl Assigner for Exact {
    fn assign(
        &mut self,
        utility: &[f64],
        n: usize,
        capacity: &[usize],
        out: &mut Vec<Option<usize>>,
    ) {
        let Some(d) = start(utility, n, capacity, out) else {
            return;
        };
        // Costs are `top - utility` >= 0, so the first potentials are 0.
        let top = utility
            .iter()
            .copied()
            .filter(|u| u.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        if !top.is_finite() {
            return;
        }
        // Nodes: 0 source, 1..=n requests, n+1..=n+d deployments, n+d+1 sink.
        let (src, sink) = (0, n + d + 1);
        let mut g = Flow::new(n + d + 2);
        for i in 0..n {
            g.edge(src, 1 + i, 1, 0.0);
            for j in 0..d {
                let u = utility[i * d + j];
                if u.is_finite() {
                    g.edge(1 + i, 1 + n + j, 1, top - u);
                }
            }
        }
        for (j, &c) in capacity.iter().enumerate() {
            if c > 0 {
                g.edge(1 + n + j, sink, c.min(n) as i32, 0.0);
            }
        }
        // Each augmentation routes one request; the shortest path adds the cheapest one,
        // so the flow of every size k is the best assignment of k requests.
        while g.augment(src, sink) {}
        for (slot, adj) in out.iter_mut().zip(&g.adj[1..=n]) {
            for &e in adj {
                let edge = &g.edges[e];
                if edge.to > n && edge.to <= n + d && edge.cap == 0 && edge.orig == 1 {
                    *slot = Some(edge.to - n - 1);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Edge {
    to: usize,
    cap: i32,
    orig: i32,
    cost: f64,
}

/// A small residual graph for successive shortest paths.
struct Flow {
    edges: Vec<Edge>,
    adj: Vec<Vec<usize>>,
    potential: Vec<f64>,
}

impl Flow {
    fn new(nodes: usize) -> Flow {
        Flow {
            edges: Vec::new(),
            adj: vec![Vec::new(); nodes],
            potential: vec![0.0; nodes],
        }
    }

    fn edge(&mut self, from: usize, to: usize, cap: i32, cost: f64) {
        self.adj[from].push(self.edges.len());
        self.edges.push(Edge {
            to,
            cap,
            orig: cap,
            cost,
        });
        self.adj[to].push(self.edges.len());
        self.edges.push(Edge {
            to: from,
            cap: 0,
            orig: 0,
            cost: -cost,
        });
    }

    /// One unit along the cheapest path (Dijkstra on reduced costs); false when the sink
    /// is unreachable.
    fn augment(&mut self, src: usize, sink: usize) -> bool {
        let nodes = self.adj.len();
        let mut dist = vec![f64::INFINITY; nodes];
        let mut prev: Vec<Option<usize>> = vec![None; nodes];
        let mut done = vec![false; nodes];
        dist[src] = 0.0;
        // Dense Dijkstra: the graphs are small (a batch and its deployments).
        loop {
            let mut v = None;
            let mut best = f64::INFINITY;
            for (k, (&dk, &fin)) in dist.iter().zip(&done).enumerate() {
                if !fin && dk < best {
                    best = dk;
                    v = Some(k);
                }
            }
            let Some(v) = v else { break };
            done[v] = true;
            for &e in &self.adj[v] {
                let edge = &self.edges[e];
                if edge.cap <= 0 {
                    continue;
                }
                let reduced = edge.cost + self.potential[v] - self.potential[edge.to];
                // Reduced costs are >= 0 up to rounding.
                let nd = dist[v] + reduced.max(0.0);
                if nd < dist[edge.to] {
                    dist[edge.to] = nd;
                    prev[edge.to] = Some(e);
                }
            }
        }
        if !dist[sink].is_finite() {
            return false;
        }
        for (p, &dk) in self.potential.iter_mut().zip(&dist) {
            if dk.is_finite() {
                *p += dk;
            }
        }
        let mut v = sink;
        while let Some(e) = prev[v] {
            self.edges[e].cap -= 1;
            self.edges[e ^ 1].cap += 1;
            v = self.edges[e ^ 1].to;
        }
        true
    }
}

/// The scaling starts at `epsilon * 2^HOTTER` and halves the temperature down to
/// `epsilon`: each colder kernel is the square of the one before, so only the hottest
/// costs exponentials.
const HOTTER: usize = 3;

/// Below this, `exp` underflows to 0 (its smallest subnormal result is `e^-744.44`).
const COLDEST_UNDERFLOW: f64 = -745.133_219_101_941_1;

/// Entropic assignment by capacity-constrained Sinkhorn scaling, then rounding.
#[derive(Debug, Clone)]
pub struct Sinkhorn {
    /// The entropic temperature, in utility units: smaller is closer to the exact
    /// assignment and slower to converge.
    pub epsilon: f64,
    pub iterations: usize,
    /// The last batch's column prices (potentials), the warm start of the next (same
    /// deployments, with the "left out" column last).
    warm: Vec<f64>,
    kernel: Vec<f64>,
    transposed: Vec<f64>,
    rows: Vec<f64>,
}

impl Default for Sinkhorn {
    fn default() -> Self {
        Sinkhorn {
            epsilon: 0.05,
            iterations: 50,
            warm: Vec::new(),
            kernel: Vec::new(),
            transposed: Vec::new(),
            rows: Vec::new(),
        }
    }
}

impl Assigner for Sinkhorn {
    fn assign(
        &mut self,
        utility: &[f64],
        n: usize,
        capacity: &[usize],
        out: &mut Vec<Option<usize>>,
    ) {
        let Some(d) = start(utility, n, capacity, out) else {
            return;
        };
        let eps = self.epsilon.max(1e-6);
        // Column `d` is "left out": worse than every placement, room for everyone. Without
        // it a batch larger than the capacities has no plan, and the rows' utilities could
        // not be compared (each row's scale is free).
        let finite = || utility[..n * d].iter().copied().filter(|u| u.is_finite());
        let lo = finite().fold(f64::INFINITY, f64::min);
        if !lo.is_finite() {
            return;
        }
        let left_out = lo - 1.0;
        let w = d + 1;
        let mut cap: Vec<f64> = capacity.iter().map(|&c| c as f64).collect();
        cap.push(n as f64);
        // The column potentials (prices) carry from batch to batch and from one
        // temperature to the next (epsilon scaling): the scaling starts hot, where prices
        // move fast, and cools to `epsilon`.
        if self.warm.len() != w {
            self.warm = vec![0.0; w];
        }
        // Padded to whole blocks of `LANES` (zero kernel entries: a padding row has no mass,
        // a padding column none either), so that the scaling's sums run in registers.
        let (np, wp) = (n.next_multiple_of(LANES), w.next_multiple_of(LANES));
        cap.resize(wp, 0.0);
        self.rows.clear();
        self.rows.resize(np, 0.0);
        // The kernel K_ij = exp((u_ij - max_j u_ij) / t) in [0, 1], row-major (for the
        // column sums) and transposed (for the row sums), at the hottest temperature first;
        // halving the temperature squares it.
        let stages = HOTTER + 1;
        let hottest = eps * f64::from(1u32 << HOTTER);
        let size = np * wp;
        self.kernel.clear();
        self.kernel.resize(size, 0.0);
        self.transposed.clear();
        self.transposed.resize(size, 0.0);
        // Each row relative to its own best (a row's scale is free: the row update absorbs
        // it), so that no row underflows to all zeros.
        let scale = 1.0 / hottest;
        for i in 0..n {
            let row = &utility[i * d..(i + 1) * d];
            let top = row
                .iter()
                .copied()
                .filter(|u| u.is_finite())
                .fold(left_out, f64::max);
            let k = &mut self.kernel[i * wp..i * wp + w];
            // A pair whose coldest kernel underflows to 0 has none at any temperature (so
            // it was when the kernels were computed coldest first and square-rooted).
            let exponent = |u: f64| {
                if (u - top) / eps < COLDEST_UNDERFLOW {
                    f64::NEG_INFINITY
                } else {
                    (u - top) * scale
                }
            };
            for (kj, &u) in k.iter_mut().zip(row) {
                *kj = if u.is_finite() {
                    exponent(u)
                } else {
                    f64::NEG_INFINITY
                };
            }
            k[d] = exponent(left_out);
            for kj in k.iter_mut() {
                *kj = exp_nonpositive(*kj);
            }
            for (j, &kij) in k.iter().enumerate() {
                self.transposed[j * np + i] = kij;
            }
        }
        let mut col = vec![0.0; wp];
        let mut b = vec![1.0; wp];
        let per_stage = (self.iterations.max(1) / stages).max(1);
        for stage in (0..stages).rev() {
            let t = eps * f64::from(1u32 << stage);
            if stage < HOTTER {
                // (Two loops: a chained iterator does not vectorise.)
                for k in self.kernel.iter_mut() {
                    *k *= *k;
                }
                for k in self.transposed.iter_mut() {
                    *k *= *k;
                }
            }
            let (kernel, transposed) = (&self.kernel, &self.transposed);
            for (bj, &g) in b.iter_mut().zip(&self.warm) {
                *bj = (-g / t).exp();
            }
            for _ in 0..per_stage {
                // Rows: each request's mass is 1.
                row_scaling(transposed, &b, &mut self.rows);
                // Columns: scaled down only where over capacity.
                column_sums(kernel, &self.rows, &mut col);
                for ((bj, &c), &cj) in b.iter_mut().zip(&col).zip(&cap) {
                    *bj = if c > 0.0 && c.is_finite() {
                        (cj / c).min(1.0)
                    } else {
                        1.0
                    };
                }
            }
            for (g, &bj) in self.warm.iter_mut().zip(&b) {
                *g = if bj > 0.0 {
                    -t * bj.ln()
                } else {
                    f64::INFINITY
                };
            }
        }
        // Rounding, by the dual prices the scaling found (a deployment's price is
        // `-eps ln b_j`): the requests that lose most by not getting their best priced
        // column go first, each to its best priced column with room. A request whose best
        // is "left out" waits for the second pass, which fills the slots still free. The
        // order comes from prices, not from the plan's mass, so it is right even where
        // the scaling has not converged.
        let priced = &self.warm;
        let value = |i: usize, j: usize| {
            let u = if j == d { left_out } else { utility[i * d + j] };
            if u.is_finite() {
                u - priced[j]
            } else {
                f64::NEG_INFINITY
            }
        };
        let mut plan: Vec<(f64, usize)> = (0..n)
            .map(|i| {
                let (mut first, mut second) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
                for j in 0..w {
                    let v = value(i, j);
                    if v > first {
                        second = first;
                        first = v;
                    } else if v > second {
                        second = v;
                    }
                }
                let regret = if second.is_finite() {
                    first - second
                } else {
                    f64::INFINITY
                };
                (regret, i)
            })
            .collect();
        plan.sort_unstable_by(|x, y| y.0.total_cmp(&x.0));
        let mut left: Vec<usize> = capacity.to_vec();
        for pass in 0..2 {
            for &(_, i) in &plan {
                if out[i].is_some() {
                    continue;
                }
                if pass == 0 && (0..d).all(|j| value(i, j) < value(i, d)) {
                    continue;
                }
                out[i] = (0..d)
                    .filter(|&j| left[j] > 0 && utility[i * d + j].is_finite())
                    .max_by(|&x, &y| value(i, x).total_cmp(&value(i, y)));
                if let Some(j) = out[i] {
                    left[j] -= 1;
                }
            }
        }
        improve(utility, d, out, &mut left);
    }
}

/// The block width of the scaling's sums: each block's partial sums stay in registers.
const LANES: usize = 8;

/// The row update: `rows[i] = 1 / sum_j K_ij b_j` (0 for a row with no mass), from the
/// transposed kernel (`b.len()` rows of `rows.len()`), `LANES` rows at a time.
fn row_scaling(transposed: &[f64], b: &[f64], rows: &mut [f64]) {
    let np = rows.len();
    for (block, out) in rows.chunks_exact_mut(LANES).enumerate() {
        let mut acc = [0.0; LANES];
        for (column, &bj) in transposed.chunks_exact(np).zip(b) {
            let k = &column[block * LANES..(block + 1) * LANES];
            for (a, &kij) in acc.iter_mut().zip(k) {
                *a += kij * bj;
            }
        }
        for (ai, s) in out.iter_mut().zip(acc) {
            *ai = if s > f64::MIN_POSITIVE && s.is_finite() {
                1.0 / s
            } else {
                0.0
            };
        }
    }
}

/// The column sums of the plan, `col[j] = sum_i rows[i] K_ij`, from the row-major kernel
/// (`rows.len()` rows of `col.len()`), `LANES` columns at a time.
fn column_sums(kernel: &[f64], rows: &[f64], col: &mut [f64]) {
    let wp = col.len();
    for (block, out) in col.chunks_exact_mut(LANES).enumerate() {
        let mut acc = [0.0; LANES];
        for (row, &ai) in kernel.chunks_exact(wp).zip(rows) {
            let k = &row[block * LANES..(block + 1) * LANES];
            for (a, &kij) in acc.iter_mut().zip(k) {
                *a += ai * kij;
            }
        }
        out.copy_from_slice(&acc);
    }
}

/// `exp(x)` for `x <= 0`, within a few units in the last place, and exactly 0 below -708
/// (just above where `exp` leaves the normal range, -708.4: no subnormals) and for `-inf`
/// and NaN. The kernel's entries are `exp(x / 8)` of its coldest exponents, so they never
/// come near it. Written so that a row of them
/// compiles to vector instructions, which `f64::exp` (a library call) does not: `x = n ln 2
/// + r` with `|r| <= ln 2 / 2`, `e^r` by its Taylor series to the `r^12` term (the rest is
/// below 1e-14 of it), and `2^n` written into the exponent bits.
fn exp_nonpositive(x: f64) -> f64 {
    // Adding 1.5 * 2^52 rounds to the nearest integer, held in the low mantissa bits.
    const SHIFTER: f64 = 6_755_399_441_055_744.0;
    // ln 2 in two parts, so that `n * LN2_HI` is exact.
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // 1 / k! for k = 0..=12.
    const TAYLOR: [f64; 13] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
    ];
    // (NaN, never passed here, also gives 0: `max` would drop it.)
    let clamped = if x >= -708.0 { x } else { -708.0 };
    let t = clamped * std::f64::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let mut p = TAYLOR[12];
    for &c in TAYLOR[..12].iter().rev() {
        p = p * r + c;
    }
    // n in [-1022, 0]: the biased exponent n + 1023 is in [1, 1023].
    let n_bits = t.to_bits().wrapping_sub(SHIFTER.to_bits());
    let two_n = f64::from_bits(n_bits.wrapping_add(1023) << 52);
    if x >= -708.0 {
        p * two_n
    } else {
        0.0
    }
}

/// Moves that raise the total, until none does: a placed request moves to a free slot
/// worth more to it, a left-out request takes the slot of a column's weakest occupant
/// when it is worth more there, two placed requests trade slots, and a left-out request
/// takes a placed one's slot while that one takes a third's, which goes out. Keeps every
/// capacity (`left`: the free slots per column).
fn improve(utility: &[f64], d: usize, out: &mut [Option<usize>], left: &mut [usize]) {
    let n = out.len();
    let u = |i: usize, j: usize| utility[i * d + j];
    let mut weakest: Vec<Option<(usize, f64)>> = vec![None; d];
    // Which requests moved since the last scan of pairs (all, before the first): a pair in
    // which neither has moved was not worth trading then and is not now, so a later scan
    // checks only the pairs with a request that moved.
    let mut moved = vec![true; n];
    let mut stale: Vec<usize> = Vec::with_capacity(n);
    for _ in 0..n {
        let mut changed = false;
        // (Skipped when every slot is taken: the common case under load.)
        let free = left.iter().any(|&l| l > 0);
        for (i, slot) in out.iter_mut().enumerate().filter(|_| free) {
            if let Some(ji) = *slot {
                let better = (0..d)
                    .filter(|&j| left[j] > 0 && u(i, j).is_finite() && u(i, j) > u(i, ji) + 1e-12)
                    .max_by(|&a, &b| u(i, a).total_cmp(&u(i, b)));
                if let Some(j) = better {
                    left[j] -= 1;
                    left[ji] += 1;
                    *slot = Some(j);
                    moved[i] = true;
                    changed = true;
                }
            }
        }
        // A left-out request takes a free slot worth having, else displaces the weakest
        // occupant of the column where it gains most over it (the displaced one is left
        // out in turn and may displace another later).
        if out.iter().any(Option::is_none) {
            for i in 0..n {
                if out[i].is_some() {
                    continue;
                }
                // (No move frees a slot, so none appear in a pass that started without one.)
                let slot = (0..d)
                    .filter(|&j| free && left[j] > 0 && u(i, j).is_finite())
                    .max_by(|&a, &b| u(i, a).total_cmp(&u(i, b)));
                if let Some(j) = slot {
                    left[j] -= 1;
                    out[i] = Some(j);
                    moved[i] = true;
                    changed = true;
                    continue;
                }
                weakest.iter_mut().for_each(|w| *w = None);
                for (l, slot) in out.iter().enumerate() {
                    if let Some(jl) = *slot {
                        let v = u(l, jl);
                        if weakest[jl].is_none_or(|(_, w)| v < w) {
                            weakest[jl] = Some((l, v));
                        }
                    }
                }
                let best = (0..d)
                    .filter_map(|j| {
                        let (l, w) = weakest[j]?;
                        let gain = u(i, j) - w;
                        (u(i, j).is_finite() && gain > 1e-12).then_some((gain, j, l))
                    })
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                if let Some((_, j, l)) = best {
                    out[i] = Some(j);
                    out[l] = None;
                    moved[i] = true;
                    moved[l] = true;
                    changed = true;
                }
            }
        }
        // Two placed requests in different columns trade when both together gain. Only
        // pairs with a request that moved since the last scan are checked: `stale` lists
        // those, ascending (more join as they trade).
        stale.clear();
        for (i, m) in moved.iter_mut().enumerate() {
            if std::mem::take(m) {
                stale.push(i);
            }
        }
        for a in 0..n {
            let Some(mut ja) = out[a] else { continue };
            let mut a_moved = stale.binary_search(&a).is_ok();
            let mut b = a + 1;
            loop {
                // Every later request once `a` has moved, else only those that have.
                let next = if a_moved {
                    Some(b).filter(|&b| b < n)
                } else {
                    stale.get(stale.partition_point(|&x| x < b)).copied()
                };
                let Some(nb) = next else { break };
                b = nb + 1;
                let Some(jb) = out[nb] else { continue };
                if ja == jb {
                    continue;
                }
                let (x, y) = (u(a, jb), u(nb, ja));
                if x.is_finite() && y.is_finite() && x + y > u(a, ja) + u(nb, jb) + 1e-12 {
                    out[a] = Some(jb);
                    out[nb] = Some(ja);
                    moved[a] = true;
                    moved[nb] = true;
                    a_moved = true;
                    if let Err(at) = stale.binary_search(&nb) {
                        stale.insert(at, nb);
                    }
                    ja = jb;
                    changed = true;
                }
            }
        }
        if !changed && out.iter().any(Option::is_none) {
            changed = chain(utility, d, out, &mut moved);
        }
        if !changed {
            break;
        }
    }
}

/// One chain move (see [`improve`]): a left-out request takes a placed one's slot, which
/// moves to the weakest occupant's slot of another column, which goes out. Whether one
/// was made. Each placed request's best column to move to (by what it gains there over
/// the weakest occupant it displaces) is found once, so a scan is `O(n d)`, not
/// `O(n^2 d)`.
fn chain(utility: &[f64], d: usize, out: &mut [Option<usize>], moved: &mut [bool]) -> bool {
    let n = out.len();
    let u = |i: usize, j: usize| utility[i * d + j];
    let mut weakest: Vec<Option<(usize, f64)>> = vec![None; d];
    for (l, slot) in out.iter().enumerate() {
        if let Some(jl) = *slot {
            let v = u(l, jl);
            if weakest[jl].is_none_or(|(_, w)| v < w) {
                weakest[jl] = Some((l, v));
            }
        }
    }
    // The weakest occupant's utility per column (infinite where a column is empty, so that
    // no move there gains).
    let floor: Vec<f64> = weakest
        .iter()
        .map(|w| w.map_or(f64::INFINITY, |(_, v)| v))
        .collect();
    // For each placed k: the column jl other than its own where it gains most over the
    // weakest occupant it would displace (the first such column on ties).
    let best_moves: Vec<Option<(f64, usize)>> = out
        .iter()
        .enumerate()
        .map(|(k, slot)| {
            let jk = (*slot)?;
            let row = &utility[k * d..(k + 1) * d];
            let (mut best, mut at) = (f64::NEG_INFINITY, None);
            for (jl, (&v, &w)) in row.iter().zip(&floor).enumerate() {
                let gain = v - w;
                if jl != jk && v.is_finite() && gain > best {
                    best = gain;
                    at = Some(jl);
                }
            }
            at.map(|jl| (best, jl))
        })
        .collect();
    for i in 0..n {
        if out[i].is_some() {
            continue;
        }
        for k in 0..n {
            let Some(jk) = out[k] else { continue };
            if !u(i, jk).is_finite() {
                continue;
            }
            let Some((gain, jl)) = best_moves[k] else {
                continue;
            };
            if u(i, jk) - u(k, jk) + gain > 1e-12 {
                let Some((l, _)) = weakest[jl] else { continue };
                out[i] = Some(jk);
                out[k] = Some(jl);
                out[l] = None;
                for m in [i, k, l] {
                    moved[m] = true;
                }
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod queue_price_tests {
    use super::*;

    #[test]
    fn a_queue_place_costs_more_as_the_queue_fills_and_none_is_left_when_full() {
        // One request: the next place's price.
        assert_eq!(queue_place_price(0.1, 0, 4, 1), Some(0.1 / 4.0));
        assert_eq!(queue_place_price(0.1, 3, 4, 1), Some(0.4));
        assert_eq!(queue_place_price(0.1, 4, 4, 1), None);
        assert_eq!(queue_place_price(0.1, 5, 4, 1), None);
        assert_eq!(queue_place_price(0.1, 0, 0, 1), None);
        assert_eq!(queue_place_price(0.0, 2, 4, 1), Some(0.0));
        let prices: Vec<f64> = (0..8)
            .filter_map(|k| queue_place_price(1.0, k, 8, 1))
            .collect();
        assert!(prices.windows(2).all(|w| w[0] < w[1]), "{prices:?}");
        // A batch that could fill the queue pays the middle place's price, not the first's.
        assert_eq!(queue_place_price(1.0, 0, 8, 64), Some(4.0 / 5.0));
        assert_eq!(queue_place_price(1.0, 0, 8, 3), Some(2.0 / 7.0));
        assert_eq!(queue_place_price(1.0, 6, 8, 64), Some(7.0 / 2.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The total utility of an assignment (unassigned rows add nothing).
    fn total_utility(utility: &[f64], d: usize, out: &[Option<usize>]) -> f64 {
        out.iter()
            .enumerate()
            .filter_map(|(i, j)| j.map(|j| utility[i * d + j]))
            .sum()
    }

    fn feasible(out: &[Option<usize>], capacity: &[usize]) -> bool {
        let mut used = vec![0; capacity.len()];
        for j in out.iter().flatten() {
            used[*j] += 1;
        }
        used.iter().zip(capacity).all(|(u, c)| u <= c)
    }

    /// Every assignment by brute force: the best total utility.
    fn brute(utility: &[f64], n: usize, capacity: &[usize]) -> f64 {
        fn go(i: usize, n: usize, u: &[f64], left: &mut Vec<usize>) -> f64 {
            if i == n {
                return 0.0;
            }
            let d = left.len();
            let mut best = go(i + 1, n, u, left); // unassigned
            for j in 0..d {
                if left[j] > 0 && u[i * d + j].is_finite() {
                    left[j] -= 1;
                    best = best.max(u[i * d + j] + go(i + 1, n, u, left));
                    left[j] += 1;
                }
            }
            best
        }
        go(0, n, utility, &mut capacity.to_vec())
    }

    #[test]
    fn exp_nonpositive_matches_the_library_exp() {
        let mut x = -708.0;
        while x <= 0.0 {
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!(
                (got - want).abs() <= 1e-15 * want,
                "exp({x}) = {got}, not {want}"
            );
            x += 0.000_937;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-708.5), 0.0);
        assert_eq!(exp_nonpositive(-1e300), 0.0);
        assert_eq!(exp_nonpositive(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(f64::NAN), 0.0);
    }

    #[test]
    fn a_burst_on_one_good_model_is_spread_by_gain() {
        // Three requests all prefer deployment 0 (capacity 1): request 1 loses most
        // elsewhere, so it gets 0 and the others go to 1.
        let u = [0.9, 0.8, 0.9, 0.3, 0.9, 0.85];
        for mut a in [AssignerKind::Exact.build(), AssignerKind::Sinkhorn.build()] {
            let mut out = Vec::new();
            a.assign(&u, 3, &[1, 2], &mut out);
            assert_eq!(out, vec![Some(1), Some(0), Some(1)]);
        }
    }

    #[test]
    fn requests_beyond_every_capacity_are_left_unassigned() {
        let u = [0.5, 0.4, 0.6, 0.1, 0.2, 0.3];
        let mut out = Vec::new();
        Exact.assign(&u, 3, &[1, 1], &mut out);
        assert_eq!(out.iter().flatten().count(), 2);
        assert!(feasible(&out, &[1, 1]));
        Sinkhorn::default().assign(&u, 3, &[1, 1], &mut out);
        assert_eq!(out.iter().flatten().count(), 2);
        assert!(feasible(&out, &[1, 1]));
    }

    #[test]
    fn regression_rows_far_below_the_best_are_still_weighed_by_their_own_utilities() {
        // Row 0 is 1,000 below row 1: against one scale its kernel underflowed to zeros.
        let u = [-1000.0, -1001.0, 0.0, -0.5];
        let mut out = Vec::new();
        Sinkhorn::default().assign(&u, 2, &[1, 1], &mut out);
        assert_eq!(out, vec![Some(0), Some(1)]);
    }

    /// Regression (review of the faster scaling): computing the kernel hottest first gave
    /// mass to pairs so far below their row's best that the coldest kernel underflows to
    /// 0, which the kernels computed coldest first never had; on utilities spread over
    /// more than about 37 the assignments changed. (Here both requests value the one open
    /// slot at 3.5; as before, the one further below its own best does not take it.)
    #[test]
    fn regression_a_pair_whose_coldest_kernel_underflows_has_no_mass_at_any_temperature() {
        let u = [41.5, 3.5, 60.5, 3.5];
        let mut out = Vec::new();
        Sinkhorn::default().assign(&u, 2, &[0, 1], &mut out);
        assert_eq!(out, vec![None, Some(1)]);
    }

    #[test]
    fn a_forbidden_pair_is_never_used() {
        let u = [f64::NEG_INFINITY, 0.1, 0.9, f64::NAN];
        let mut out = Vec::new();
        Exact.assign(&u, 2, &[2, 2], &mut out);
        assert_eq!(out, vec![Some(1), Some(0)]);
        Sinkhorn::default().assign(&u, 2, &[2, 2], &mut out);
        assert_eq!(out, vec![Some(1), Some(0)]);
    }

    fn batch() -> impl Strategy<Value = (usize, Vec<usize>, Vec<f64>)> {
        (1usize..6, 1usize..4).prop_flat_map(|(n, d)| {
            (
                Just(n),
                prop::collection::vec(0usize..4, d),
                prop::collection::vec(0.0f64..1.0, n * d),
            )
        })
    }

    fn larger_batch() -> impl Strategy<Value = (usize, Vec<usize>, Vec<f64>)> {
        (1usize..48, 1usize..12).prop_flat_map(|(n, d)| {
            (
                Just(n),
                prop::collection::vec(0usize..6, d),
                prop::collection::vec(0.0f64..1.0, n * d),
            )
        })
    }

    proptest! {
        /// The moves only scan pairs with a request that moved since the last scan; what
        /// they leave is still a local optimum: no two placed requests gain by trading.
        #[test]
        fn sinkhorn_leaves_no_trade_that_gains((n, cap, u) in larger_batch()) {
            let d = cap.len();
            let mut out = Vec::new();
            Sinkhorn::default().assign(&u, n, &cap, &mut out);
            prop_assert!(feasible(&out, &cap));
            for a in 0..n {
                for b in a + 1..n {
                    let (Some(ja), Some(jb)) = (out[a], out[b]) else { continue };
                    let gain = u[a * d + jb] + u[b * d + ja] - u[a * d + ja] - u[b * d + jb];
                    prop_assert!(gain <= 1e-9, "{} and {} gain {} by trading", a, b, gain);
                }
            }
        }

        /// The exact solver's total is the brute-force optimum, and it fills as many
        /// slots as there are.
        #[test]
        fn exact_is_optimal((n, cap, u) in batch()) {
            let mut out = Vec::new();
            Exact.assign(&u, n, &cap, &mut out);
            prop_assert!(feasible(&out, &cap));
            let got = total_utility(&u, cap.len(), &out);
            let best = brute(&u, n, &cap);
            prop_assert!((got - best).abs() < 1e-9, "{} vs {}", got, best);
            let slots: usize = cap.iter().sum();
            prop_assert_eq!(out.iter().flatten().count(), n.min(slots));
        }

        /// Sinkhorn never breaks a capacity, fills every slot it can, and is near the
        /// optimum (within 0.15 per request).
        #[test]
        fn sinkhorn_is_feasible_and_near_optimal((n, cap, u) in batch()) {
            let mut out = Vec::new();
            Sinkhorn::default().assign(&u, n, &cap, &mut out);
            prop_assert!(feasible(&out, &cap));
            let slots: usize = cap.iter().sum();
            prop_assert_eq!(out.iter().flatten().count(), n.min(slots));
            let got = total_utility(&u, cap.len(), &out);
            let best = brute(&u, n, &cap);
            // Approximate: rare roundings that only a longer chain of moves would mend
            // lose up to about 0.1 per request (found in CI: the regressions file).
            prop_assert!(got >= best - 0.15 * n as f64, "{} vs {}", got, best);
        }
    }
}
