//! PyTorch checkpoints (`.pth`, `.ckpt`: a zip holding a pickle and raw tensor data) are read
//! with candle's pickle reader, which is not written for hostile files: a string length, a
//! memo copy or a tensor shape is allocated as claimed, and nesting is followed by recursion.
//! The file is checked here first, so that a bad checkpoint is one error line, not an abort:
//! the pickle is replayed on a model of candle's stack that only counts (depth and size of
//! every object, bytes a string claims), and every tensor must fit the data the zip holds.
//! Nothing in the pickle is ever executed, by candle or here. What the count-only model cannot
//! see (candle indexes the arguments of `_rebuild_tensor_v2` without checking their number:
//! fuzzing found that panic) is caught: candle's calls run under `quietly`, where a panic is an
//! error like any other bad file.

use std::io::Read;
use std::path::Path;

use candle_core::pickle::PthTensors;

use crate::{Error, Result};

/// Deeper than any state dict (a few levels), shallow enough to drop without recursion trouble.
const MAX_DEPTH: u32 = 256;
/// Objects built, memo copies included (an SD checkpoint's pickle makes ~10^4).
const MAX_OBJECTS: u64 = 20_000_000;
/// A pickle larger than this is not a checkpoint (SD's is ~100 KB; the tensors live apart).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Opens a checkpoint with candle's reader once its pickles are checked: the state dict under
/// the first of `keys` that holds tensors (`None`: the top level), else what the last key gives.
/// Every tensor of the result is checked to fit the data the zip holds for it.
pub(crate) fn open_pth(path: &Path, keys: &[Option<&str>]) -> Result<PthTensors> {
    let bad = |m: String| Error::Weights(format!("{}: {m}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a PyTorch zip checkpoint ({e})")))?;
    let pickles: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n.ends_with("data.pkl"))
        .collect();
    for name in &pickles {
        let entry = zip.by_name(name).map_err(|e| bad(e.to_string()))?;
        if entry.size() > MAX_PICKLE_BYTES {
            return Err(bad(format!("{name}: a {} byte pickle", entry.size())));
        }
        let mut bytes = Vec::new();
        entry
            .take(MAX_PICKLE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        check_pickle(&bytes).map_err(|m| bad(format!("{name}: {m}")))?;
    }
    let mut opened = Err(bad("no state dict key to try".into()));
    for &key in keys {
        opened = quietly(|| PthTensors::new(path, key)).map_err(|e| bad(e.to_string()));
        if opened.as_ref().is_ok_and(|p| !p.tensor_infos().is_empty()) {
            break;
        }
    }
    let pth = opened?;
    for info in pth.tensor_infos().values() {
        let needed = info
            .layout
            .shape()
            .dims()
            .iter()
            .try_fold(info.dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
            .and_then(|b| b.checked_add(info.layout.start_offset()));
        let stored = zip.by_name(&info.path).map(|e| e.size()).unwrap_or(0);
        if needed.is_none_or(|n| n as u64 > stored) {
            return Err(bad(format!(
                "tensor {} claims more data ({:?} {:?}) than the file holds for it ({stored} bytes)",
                info.name,
                info.dtype,
                info.layout.shape().dims()
            )));
        }
    }
    Ok(pth)
}

/// One tensor of a checkpoint opened by [`open_pth`], read under the same protection.
pub(crate) fn read_tensor(
    pth: &PthTensors,
    name: &str,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    quietly(|| pth.get(name))
}

/// Runs `f` (candle's pickle reader), turning a panic into an error without the panic
/// message on stderr: the user gets one line about the bad file.
fn quietly<T>(f: impl FnOnce() -> candle_core::Result<T>) -> candle_core::Result<T> {
    use std::cell::Cell;
    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("malformed data");
        Err(candle_core::Error::Msg(format!(
            "unreadable checkpoint (the pickle reader failed: {why})"
        )))
    })
}

/// What an object on candle's stack would cost: its nesting depth and object count.
#[derive(Clone, Copy)]
struct Cost {
    depth: u32,
    objects: u64,
}

const LEAF: Cost = Cost {
    depth: 1,
    objects: 1,
};

enum Item {
    Mark,
    Obj(Cost),
}

/// Replays the opcodes candle's reader knows (the same stack effects) on costs alone.
fn check_pickle(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut r = bytes;
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: std::collections::HashMap<u32, Cost> = std::collections::HashMap::new();
    let mut built: u64 = 0;
    let take = |r: &mut &[u8], n: usize| -> std::result::Result<(), String> {
        if r.len() < n {
            return Err("the pickle ends early".into());
        }
        *r = &r[n..];
        Ok(())
    };
    let u32_at = |r: &[u8]| -> Option<u32> {
        r.get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let pop = |stack: &mut Vec<Item>| -> std::result::Result<Cost, String> {
        match stack.pop() {
            Some(Item::Obj(c)) => Ok(c),
            _ => Err("stack underflow".into()),
        }
    };
    let to_mark = |stack: &mut Vec<Item>| -> std::result::Result<Vec<Cost>, String> {
        let at = stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or("no mark")?;
        let items = stack
            .split_off(at + 1)
            .into_iter()
            .map(|i| match i {
                Item::Obj(c) => c,
                Item::Mark => LEAF,
            })
            .collect();
        stack.pop();
        Ok(items)
    };
    let combine = |parts: &[Cost]| Cost {
        depth: 1 + parts.iter().map(|c| c.depth).max().unwrap_or(0),
        objects: parts.iter().fold(1u64, |a, c| a.saturating_add(c.objects)),
    };
    // Adds children to the container on top of the stack (APPEND, SETITEMS, ...).
    let extend = |stack: &mut Vec<Item>, parts: &[Cost]| -> std::result::Result<Cost, String> {
        match stack.last_mut() {
            Some(Item::Obj(c)) => {
                let grown = combine(
                    &[
                        parts,
                        &[Cost {
                            depth: c.depth - 1,
                            objects: c.objects - 1,
                        }],
                    ]
                    .concat(),
                );
                *c = grown;
                Ok(grown)
            }
            _ => Err("no container to add to".into()),
        }
    };
    loop {
        let Some((&op, rest)) = r.split_first() else {
            return Err("no STOP opcode".into());
        };
        r = rest;
        let made = match op {
            0x80 => {
                take(&mut r, 1)?;
                None
            }
            b'c' => {
                for _ in 0..2 {
                    let nl = r
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or("unterminated GLOBAL")?;
                    take(&mut r, nl + 1)?;
                }
                Some(LEAF)
            }
            b'K' => take(&mut r, 1).map(|_| Some(LEAF))?,
            b'M' => take(&mut r, 2).map(|_| Some(LEAF))?,
            b'J' => take(&mut r, 4).map(|_| Some(LEAF))?,
            b'G' => take(&mut r, 8).map(|_| Some(LEAF))?,
            0x8a => {
                let n = *r.first().ok_or("the pickle ends early")? as usize;
                take(&mut r, 1 + n)?;
                Some(LEAF)
            }
            b'X' => {
                let n = u32_at(r).ok_or("the pickle ends early")? as usize;
                take(&mut r, 4)?;
                take(&mut r, n).map_err(|_| format!("a string of {n} bytes past the end"))?;
                Some(LEAF)
            }
            b'N' | 0x88 | 0x89 | b')' | b']' | b'}' => Some(LEAF),
            b'(' => {
                stack.push(Item::Mark);
                None
            }
            b'Q' => {
                let c = pop(&mut stack)?;
                Some(combine(&[c]))
            }
            b't' | b'd' => {
                let parts = to_mark(&mut stack)?;
                Some(combine(&parts))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let parts = (0..n)
                    .map(|_| pop(&mut stack))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Some(combine(&parts))
            }
            b'R' | 0x81 | b'b' => {
                let parts = [pop(&mut stack)?, pop(&mut stack)?];
                Some(combine(&parts))
            }
            b'a' => {
                let c = pop(&mut stack)?;
                let grown = extend(&mut stack, &[c])?;
                built = built.saturating_add(1);
                check(grown, built)?;
                None
            }
            b's' => {
                let parts = [pop(&mut stack)?, pop(&mut stack)?];
                let grown = extend(&mut stack, &parts)?;
                built = built.saturating_add(1);
                check(grown, built)?;
                None
            }
            b'e' | b'u' => {
                let parts = to_mark(&mut stack)?;
                let grown = extend(&mut stack, &parts)?;
                built = built.saturating_add(1);
                check(grown, built)?;
                None
            }
            b'h' | b'j' => {
                let id = memo_id(&mut r, op == b'h')?;
                // candle copies the memo object: its whole size is built again.
                Some(
                    *memo
                        .get(&id)
                        .ok_or("memo entry read before it is written")?,
                )
            }
            b'q' | b'r' => {
                let id = memo_id(&mut r, op == b'q')?;
                let Some(Item::Obj(c)) = stack.last() else {
                    return Err("PUT with nothing to store".into());
                };
                let c = *c;
                built = built.saturating_add(c.objects);
                check(c, built)?;
                memo.insert(id, c);
                None
            }
            b'.' => return Ok(()),
            other => return Err(format!("opcode {other:#04x} is not part of a checkpoint")),
        };
        if let Some(c) = made {
            built = built.saturating_add(c.objects);
            check(c, built)?;
            stack.push(Item::Obj(c));
        }
    }
}

/// The memo index after BINGET/BINPUT (one byte) or LONG_BINGET/LONG_BINPUT (four).
fn memo_id(r: &mut &[u8], short: bool) -> std::result::Result<u32, String> {
    let n = if short { 1 } else { 4 };
    let Some(b) = r.get(..n) else {
        return Err("the pickle ends early".into());
    };
    let id = if short {
        b[0] as u32
    } else {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    *r = &r[n..];
    Ok(id)
}

fn check(c: Cost, built: u64) -> std::result::Result<(), String> {
    if c.depth > MAX_DEPTH {
        return Err(format!("objects nested more than {MAX_DEPTH} deep"));
    }
    if built > MAX_OBJECTS {
        return Err(format!("more than {MAX_OBJECTS} objects"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickles_are_measured_before_candle_reads_them() {
        // {"a": [1, 2]} as protocol 2 writes it.
        let ok = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02es.";
        assert_eq!(check_pickle(ok), Ok(()));
        let deep = [&b"\x80\x02"[..], &[b']'; 300], &[b'a'; 299], b"."].concat();
        assert!(check_pickle(&deep).unwrap_err().contains("nested"));
        // A memo copy doubling its size 40 times.
        let mut bomb = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            bomb.extend(b"(h\x00h\x00tq\x00");
        }
        bomb.push(b'.');
        assert!(check_pickle(&bomb).unwrap_err().contains("objects"));
        let long = b"\x80\x02X\xff\xff\xff\xffabc.";
        assert!(check_pickle(long).unwrap_err().contains("past the end"));
        assert!(check_pickle(b"\x80\x02K").is_err());
        assert!(check_pickle(b"\x80\x02i__builtin__\nexec\n.").is_err());
    }
}
