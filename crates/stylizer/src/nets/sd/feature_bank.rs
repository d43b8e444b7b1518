//! StreamV2V's feature bank: Liang et al., "Looking Backward: Streaming Video-to-Video
//! Translation with Feature Banks" (ICLR 2025), as Jeff-LiangF/streamv2v runs it
//! (`src/streamv2v/models/attention_processor.py` `CachedSTXFormersAttnProcessor`,
//! `models/utils.py` `get_nn_feats` and `random_bipartite_soft_matching`):
//!
//! - every self-attention layer keeps a bank of keys, values and outputs of earlier calls; its
//!   keys and values are the frame's own followed by the bank's;
//! - in the mid block and the first two up blocks (by name, as the reference matches
//!   `mid_block`, `up_blocks.0`, `up_blocks.1`), every output token whose best cosine match
//!   among the bank's outputs reaches `threshold` becomes `strength`·match + (1 − strength)·own;
//! - every `interval`-th call of the layer (counted from the chain's start) its keys, values and
//!   outputs (before that blend) enter the bank: merged with the bank by random bipartite token
//!   matching (ToMe; the reference's default: the bank keeps as many tokens as a frame has), or
//!   kept whole as the last `n` entries (FIFO).
//!
//! The reference counts a layer's calls whatever frame or step they belong to. Its default
//! stream batch runs four frames at four steps in one UNet call; frames rendered one by one (its
//! own `use_denoising_batch=False`, the order here) make every denoising step a call.

use std::collections::VecDeque;

use candle_core::{bail, DType, Result, Tensor, D};

/// Where a UNet call is: the self-attention layers inject features by the block they sit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Down(usize),
    Mid,
    Up(usize),
}

/// How the bank keeps what enters it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Keep {
    /// Old and new tokens merged by random bipartite matching: `ratio` of them (as the
    /// reference's `tome_ratio`, 0.5) are averaged into their most similar other.
    Merged { ratio: f64 },
    /// The last `n` entries whole (`use_tome_cache=False`, `cache_maxframes` n).
    Fifo(usize),
}

impl std::str::FromStr for Keep {
    type Err = crate::Error;
    /// `merged` (ratio 0.5) or `fifo:N`.
    fn from_str(s: &str) -> crate::Result<Self> {
        let bad = || {
            crate::Error::Value(format!(
                "unknown feature bank `{s}` (merged or fifo:N, N ≥ 1)"
            ))
        };
        match s.split_once(':') {
            None if s == "merged" => Ok(Keep::Merged { ratio: 0.5 }),
            Some(("fifo", n)) => match n.parse() {
                Ok(n) if n >= 1 => Ok(Keep::Fifo(n)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// The bank's settings: the reference's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BankSettings {
    /// Calls between updates (`cache_interval`).
    pub interval: u64,
    /// Feature injection: (strength, cosine threshold), or none.
    pub injection: Option<(f32, f32)>,
    pub keep: Keep,
}

impl Default for BankSettings {
    fn default() -> Self {
        Self {
            interval: 4,
            injection: Some((0.8, 0.98)),
            keep: Keep::Merged { ratio: 0.5 },
        }
    }
}

impl std::fmt::Display for BankSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream every {}", self.interval)?;
        if let Some((s, t)) = self.injection {
            write!(f, " inject {s} at {t}")?;
        }
        match self.keep {
            Keep::Merged { ratio } => write!(f, " merged {ratio}"),
            Keep::Fifo(n) => write!(f, " fifo {n}"),
        }
    }
}

/// Where the bank is used: the frame, its denoising step (from 0 among the steps that run)
/// and the self-attention layer (from 0 in the order the UNet calls them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BankAt {
    pub frame: u64,
    pub step: usize,
    pub layer: usize,
}

/// A discrete choice the bank makes per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Which kept token a merged one goes into.
    Into,
    /// Which bank output an output token takes, or −1 for none (below the threshold).
    Nearest,
}

/// Two scores closer than this are a tie that float rounding decides: a replay takes the
/// reference's side of it.
pub const NEAR_TIE: f32 = 1e-4;

/// The bank's random draws, and a replay's reference choices.
pub trait BankDraws: Send {
    /// Per batch row, a permutation of `0..tokens` (the reference's
    /// `torch.rand(...).argsort()`): its first `r` tokens are merged into the others.
    fn order(&mut self, at: BankAt, rows: usize, tokens: usize) -> crate::Result<Vec<Vec<u32>>>;

    /// What a reference run chose at `at`, per row and token. The tiny test models tie often
    /// (their features are nearly parallel), and a near tie goes either way with the order of
    /// a sum, so a replay follows the reference there and must agree everywhere else.
    fn reference(&mut self, _at: BankAt, _choice: Choice) -> crate::Result<Option<Vec<Vec<i64>>>> {
        Ok(None)
    }
}

/// Our `ours` choices per token, or the reference's `theirs` where given, each of ours then
/// within [`NEAR_TIE`] of theirs by `score(token, choice)`.
fn settle(
    ours: Vec<i64>,
    score: impl Fn(usize, i64) -> f32,
    theirs: Option<&[i64]>,
    what: &str,
) -> Result<Vec<i64>> {
    let Some(theirs) = theirs else {
        return Ok(ours);
    };
    if theirs.len() != ours.len() {
        bail!(
            "{what}: the reference chose for {} tokens, we for {}",
            theirs.len(),
            ours.len()
        );
    }
    let mut ties = 0;
    for (token, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
        let (sa, sb) = (score(token, a), score(token, b));
        if a != b && (sa - sb).abs() > NEAR_TIE {
            bail!("{what}: token {token} chose {a} (score {sa}), the reference {b} (score {sb}): no near tie");
        }
        ties += (a != b) as usize;
    }
    if ties > 0 {
        tracing::debug!("{what}: {ties} near ties decided as the reference did");
    }
    Ok(theirs.to_vec())
}

/// One bank entry of a layer: keys, values and outputs `[batch, tokens, channels]`.
struct Entry {
    keys: Tensor,
    values: Tensor,
    outputs: Tensor,
}

/// The banks of every self-attention layer, in the order the UNet calls them.
pub struct FeatureBank {
    settings: BankSettings,
    layers: Vec<VecDeque<Entry>>,
    /// UNet calls since the chain started.
    calls: u64,
    /// Output tokens injected so far (over rows and layers), for the logs.
    injected: u64,
}

impl FeatureBank {
    pub fn new(settings: BankSettings) -> Self {
        Self {
            settings,
            layers: Vec::new(),
            calls: 0,
            injected: 0,
        }
    }

    /// Forgets everything: the next call starts the chain.
    pub fn clear(&mut self) {
        self.layers.clear();
        self.calls = 0;
    }

    /// Output tokens the injection replaced since the bank was made.
    pub fn injected(&self) -> u64 {
        self.injected
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.layers
            .iter()
            .flatten()
            .map(|e| size(&e.keys) + size(&e.values) + size(&e.outputs))
            .sum()
    }

    /// A UNet call of frame `frame` at step `step`, merges ordered by `draws`.
    pub fn call<'a>(
        &'a mut self,
        draws: &'a mut dyn BankDraws,
        frame: u64,
        step: usize,
    ) -> BankCall<'a> {
        let update = self.calls % self.settings.interval == 0;
        self.calls += 1;
        BankCall {
            bank: self,
            draws,
            frame,
            step,
            update,
            next: 0,
            injects: false,
        }
    }
}

/// One UNet call's use of the bank.
pub struct BankCall<'a> {
    bank: &'a mut FeatureBank,
    draws: &'a mut dyn BankDraws,
    frame: u64,
    step: usize,
    /// Whether this call's tokens enter the bank.
    update: bool,
    /// The next self-attention layer.
    next: usize,
    injects: bool,
}

impl BankCall<'_> {
    /// The UNet enters `block`.
    pub fn enter(&mut self, block: Block) {
        self.injects = matches!(block, Block::Mid | Block::Up(0) | Block::Up(1));
    }

    /// The next layer's keys and values: its own `keys`, `values` followed by the bank's.
    pub fn keys_values(&mut self, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.bank.layers.len() <= self.next {
            self.bank.layers.resize_with(self.next + 1, VecDeque::new);
        }
        let held = &self.bank.layers[self.next];
        if held.is_empty() {
            return Ok((keys.clone(), values.clone()));
        }
        for e in held {
            if e.keys.dim(0)? != keys.dim(0)? || e.keys.dim(2)? != keys.dim(2)? {
                bail!(
                    "feature bank keys {:?} do not fit the frame's {:?} (guidance changed)",
                    e.keys.dims(),
                    keys.dims()
                );
            }
        }
        let cat = |own: &Tensor, of: fn(&Entry) -> &Tensor| {
            let parts: Vec<&Tensor> = std::iter::once(own).chain(held.iter().map(of)).collect();
            Tensor::cat(&parts, 1)
        };
        Ok((cat(keys, |e| &e.keys)?, cat(values, |e| &e.values)?))
    }

    /// After the layer attended: `output` blended with its nearest bank outputs where the
    /// layer injects, and the layer's `keys`, `values` and `output` (before the blend) put
    /// into the bank on an update call. Returns the layer's output.
    pub fn attended(&mut self, keys: Tensor, values: Tensor, output: Tensor) -> Result<Tensor> {
        let layer = self.next;
        self.next += 1;
        let held = &self.bank.layers[layer];
        let out = match (
            self.bank.settings.injection,
            self.injects && !held.is_empty(),
        ) {
            (Some((strength, threshold)), true) => {
                let outputs: Vec<&Tensor> = held.iter().map(|e| &e.outputs).collect();
                let at = BankAt {
                    frame: self.frame,
                    step: self.step,
                    layer,
                };
                let reference = self
                    .draws
                    .reference(at, Choice::Nearest)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                let (nearest, count) = nearest_features(
                    &output,
                    &Tensor::cat(&outputs, 1)?,
                    threshold,
                    reference.as_deref(),
                )?;
                self.bank.injected += count;
                (output.affine(1.0 - strength as f64, 0.0)?
                    + nearest.affine(strength as f64, 0.0)?)?
            }
            _ => output.clone(),
        };
        if self.update {
            let entry = Entry {
                keys,
                values,
                outputs: output,
            };
            let at = BankAt {
                frame: self.frame,
                step: self.step,
                layer,
            };
            let held = &mut self.bank.layers[layer];
            match self.bank.settings.keep {
                Keep::Merged { ratio } => {
                    let merged = match held.pop_front() {
                        Some(old) => merge(&old, &entry, ratio, at, self.draws)?,
                        None => entry,
                    };
                    held.push_back(merged);
                }
                Keep::Fifo(n) => {
                    held.push_back(entry);
                    while held.len() > n {
                        held.pop_front();
                    }
                }
            }
        }
        Ok(out)
    }
}

/// `get_nn_feats`: every token of `x` `[B, N, C]` replaced by its best cosine match in `y`
/// `[B, M, C]` where that match reaches `threshold`. `reference`: a replay's choices
/// ([`Choice::Nearest`]). Returns the result and how many tokens were replaced.
fn nearest_features(
    x: &Tensor,
    y: &Tensor,
    threshold: f32,
    reference: Option<&[Vec<i64>]>,
) -> Result<(Tensor, u64)> {
    // F.normalize: x / max(‖x‖, 1e-12).
    let unit = |t: &Tensor| -> Result<Tensor> {
        let norm = t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
        t.broadcast_div(&norm)
    };
    let cosine = unit(x)?.matmul(&unit(y)?.transpose(1, 2)?.contiguous()?)?;
    let mut which = cosine.argmax(D::Minus1)?;
    let mut take = cosine.max(D::Minus1)?.ge(threshold as f64)?;
    if let Some(rows) = reference {
        let (mut all_which, mut all_take) = (Vec::new(), Vec::new());
        for (b, theirs) in rows.iter().enumerate() {
            let cos: Vec<Vec<f32>> = cosine.get(b)?.to_vec2()?;
            let ours = which.get(b)?.to_vec1::<u32>()?;
            let taken = take.get(b)?.to_vec1::<u8>()?;
            let ours = ours
                .iter()
                .zip(taken)
                .map(|(&i, t)| if t == 1 { i as i64 } else { -1 })
                .collect();
            let score = |token: usize, i: i64| match i {
                -1 => threshold,
                i => cos[token][i as usize],
            };
            let settled = settle(ours, score, Some(theirs), "feature injection")?;
            all_take.extend(settled.iter().map(|&i| (i >= 0) as u8));
            all_which.extend(settled.iter().map(|&i| i.max(0) as u32));
        }
        let shape = (rows.len(), x.dim(1)?);
        which = Tensor::from_vec(all_which, shape, x.device())?;
        take = Tensor::from_vec(all_take, shape, x.device())?;
    }
    let rows = (0..x.dim(0)?)
        .map(|b| y.get(b)?.index_select(&which.get(b)?, 0))
        .collect::<Result<Vec<_>>>()?;
    let nearest = Tensor::stack(&rows, 0)?;
    let count = take.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as u64;
    let chosen = take
        .unsqueeze(D::Minus1)?
        .broadcast_as(x.shape())?
        .where_cond(&nearest, x)?;
    Ok((chosen, count))
}

/// `random_bipartite_soft_matching` on `[old, new]` with `keys` as the metric, then `merge_kv_out`
/// (`scatter_reduce` mean, the destination included): per row a random `ratio` of the tokens
/// are averaged into the most similar of the others, which are kept in the random order.
fn merge(
    old: &Entry,
    new: &Entry,
    ratio: f64,
    at: BankAt,
    draws: &mut dyn BankDraws,
) -> Result<Entry> {
    let both = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 1);
    let keys = both(&old.keys, &new.keys)?;
    let values = both(&old.values, &new.values)?;
    let outputs = both(&old.outputs, &new.outputs)?;
    let (rows, n, _) = keys.dims3()?;
    let r = (ratio * n as f64) as usize;
    let replay = |e: crate::Error| candle_core::Error::Msg(e.to_string());
    let orders = draws.order(at, rows, n).map_err(replay)?;
    let reference = draws.reference(at, Choice::Into).map_err(replay)?;
    let device = keys.device();
    let mut merged: [Vec<Tensor>; 3] = Default::default();
    for (b, perm) in orders.iter().enumerate() {
        if perm.len() != n {
            bail!("merge order of {} tokens for {n}", perm.len());
        }
        let src = Tensor::new(&perm[..r], device)?;
        let dst = Tensor::new(&perm[r..], device)?;
        let k = keys.get(b)?;
        let metric = k.broadcast_div(&k.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?;
        let scores = metric
            .index_select(&src, 0)?
            .matmul(&metric.index_select(&dst, 0)?.t()?)?;
        let mut into = scores.argmax(D::Minus1)?;
        if let Some(rows) = &reference {
            let table: Vec<Vec<f32>> = scores.to_vec2()?;
            let ours = into.to_vec1::<u32>()?.into_iter().map(i64::from).collect();
            let score = |token: usize, i: i64| table[token][i as usize];
            let theirs = rows.get(b).map(Vec::as_slice);
            let settled = settle(ours, score, theirs, "feature bank merge")?;
            let settled: Vec<u32> = settled.into_iter().map(|i| i as u32).collect();
            into = Tensor::new(settled, device)?;
        }
        let ones = |len: usize| Tensor::ones(len, keys.dtype(), device);
        let counts = ones(n - r)?.index_add(&into, &ones(r)?, 0)?.unsqueeze(1)?;
        for (slot, t) in merged.iter_mut().zip([&keys, &values, &outputs]) {
            let t = t.get(b)?;
            let sums = t
                .index_select(&dst, 0)?
                .index_add(&into, &t.index_select(&src, 0)?, 0)?;
            slot.push(sums.broadcast_div(&counts)?);
        }
    }
    let [keys, values, outputs] = merged.map(|rows| Tensor::stack(&rows, 0));
    Ok(Entry {
        keys: keys?,
        values: values?,
        outputs: outputs?,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The identity order: the first half merges into the second.
    struct InOrder;

    impl BankDraws for InOrder {
        fn order(&mut self, _: BankAt, rows: usize, n: usize) -> crate::Result<Vec<Vec<u32>>> {
            Ok(vec![(0..n as u32).collect(); rows])
        }
    }

    fn t(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (1, rows.len(), 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_merge_averages_each_token_into_its_closest_kept_one() {
        // Old tokens point along x and y; new ones close to them: with the identity order the
        // old ones are the sources, merged into the new ones they point along.
        let old = Entry {
            keys: t(&[[1.0, 0.0], [0.0, 1.0]]),
            values: t(&[[2.0, 0.0], [0.0, 4.0]]),
            outputs: t(&[[1.0, 1.0], [3.0, 3.0]]),
        };
        let new = Entry {
            keys: t(&[[0.0, 2.0], [3.0, 0.1]]),
            values: t(&[[0.0, 2.0], [4.0, 0.0]]),
            outputs: t(&[[5.0, 5.0], [7.0, 7.0]]),
        };
        let at = BankAt {
            frame: 0,
            step: 0,
            layer: 0,
        };
        let m = merge(&old, &new, 0.5, at, &mut InOrder).unwrap();
        let v = |t: &Tensor| t.get(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(v(&m.values), [[0.0, 3.0], [3.0, 0.0]]);
        assert_eq!(v(&m.outputs), [[4.0, 4.0], [4.0, 4.0]]);
    }

    #[test]
    fn banks_parse_as_the_flag_gives_them() {
        assert_eq!(
            "merged".parse::<Keep>().unwrap(),
            Keep::Merged { ratio: 0.5 }
        );
        assert_eq!("fifo:3".parse::<Keep>().unwrap(), Keep::Fifo(3));
        for bad in ["fifo:0", "fifo", "lifo:2", ""] {
            assert!(bad.parse::<Keep>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_replay_follows_the_reference_only_at_near_ties() {
        let scores = [[0.5, 0.5 + NEAR_TIE / 2.0], [0.9, 0.1]];
        let score = |t: usize, i: i64| scores[t][i as usize];
        let settled = settle(vec![1, 0], score, Some(&[0, 0]), "test").unwrap();
        assert_eq!(settled, [0, 0]);
        let e = settle(vec![1, 0], score, Some(&[1, 1]), "test").unwrap_err();
        assert!(e.to_string().contains("token 1 chose 0"), "{e}");
        assert_eq!(settle(vec![1, 0], score, None, "test").unwrap(), [1, 0]);
    }

    #[test]
    fn injection_replaces_only_tokens_with_a_close_match() {
        let x = t(&[[1.0, 0.0], [1.0, 1.0]]);
        let y = t(&[[2.0, 0.01], [0.0, 5.0]]);
        let (chosen, count) = nearest_features(&x, &y, 0.98, None).unwrap();
        assert_eq!(count, 1);
        let got = chosen.get(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(got, [[2.0, 0.01], [1.0, 1.0]]);
    }
}
