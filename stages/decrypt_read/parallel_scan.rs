//! Reading one large table on several connections at once.
//!
//! SQLCipher decrypts every page on the thread that steps the query, so one connection reads
//! a database at the speed of one core however many there are. A rowid table's B-tree keeps
//! each rowid range on its own pages, so connections that each read one range decrypt disjoint
//! pages and together read the file at the speed of all cores.

use std::mem::MaybeUninit;

use anyhow::{Context, bail};
use rayon::prelude::*;
use rusqlite::Connection;

/// Rows below which one connection is used: opening another costs a key derivation.
const ROWS_PER_PART: i64 = 100_000;

/// Half-open rowid ranges `[lo, hi)` covering `table`, one per part: `parts` if given, else
/// one per core for large tables. Empty when the table has no rows.
pub fn rowid_ranges(conn: &Connection, table: &str, parts: Option<usize>) -> anyhow::Result<Vec<(i64, i64)>> {
    // One subquery each: SQLite reads a lone min() or max() from the B-tree's end, but both in
    // one SELECT scan (and decrypt) the whole table.
    let sql = format!("SELECT (SELECT min(rowid) FROM \"{table}\"), (SELECT max(rowid) FROM \"{table}\")");
    let (lo, hi): (Option<i64>, Option<i64>) = conn
        .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
        .with_context(|| format!("reading the rowid range of table {table}"))?;
    let (Some(lo), Some(hi)) = (lo, hi) else { return Ok(Vec::new()) };
    let span = hi as i128 - lo as i128 + 1;
    let parts = parts.unwrap_or_else(|| {
        let by_size = (span / ROWS_PER_PART as i128).max(1) as usize;
        by_size.min(rayon::current_num_threads())
    });
    let parts = parts.clamp(1, span.min(usize::MAX as i128) as usize);
    // The last bound is hi + 1; for a rowid of i64::MAX it wraps, which `range_condition` reads
    // as "no upper bound".
    let bounds: Vec<i64> = (0..=parts).map(|i| (lo as i128 + span * i as i128 / parts as i128) as i64).collect();
    Ok(bounds.windows(2).map(|w| (w[0], w[1])).collect())
}

/// Rows of all ranges above which the output is not reserved up front (see [`scan`]).
const MAX_RESERVED_ROWS: usize = 1 << 26;

/// Where [`scan`]'s `read` puts one range's rows.
pub struct Sink<'a, T>(SinkInner<'a, T>);

enum SinkInner<'a, T> {
    /// The range's own stretch of the output's spare capacity; the first `len` are written.
    Slots { slots: &'a mut [MaybeUninit<T>], len: usize },
    /// A vector of its own, appended to the output at the end.
    Owned(Vec<T>),
}

impl<T> Sink<'_, T> {
    pub fn push(&mut self, row: T) -> anyhow::Result<()> {
        match &mut self.0 {
            SinkInner::Slots { slots, len } => {
                // A range [lo, hi) holds at most hi - lo rows, unless the B-tree is corrupt.
                let Some(slot) = slots.get_mut(*len) else { bail!("more rows than rowids in a range") };
                slot.write(row);
                *len += 1;
            }
            SinkInner::Owned(v) => v.push(row),
        }
        Ok(())
    }
}

impl<T> Drop for Sink<'_, T> {
    fn drop(&mut self) {
        if let SinkInner::Slots { slots, len } = &mut self.0 {
            for slot in &mut slots[..*len] {
                // SAFETY: the first `len` slots were written by `push` and are dropped once here;
                // a sink that handed its rows to the output was forgotten instead.
                unsafe { slot.assume_init_drop() };
            }
        }
    }
}

/// Run `read(conn, lo, hi, sink)` for every range, each on its own connection from `open`, in
/// parallel; the rows come back in range order, with what each `read` returned. `read`
/// selects its rows with [`range_condition`]`(lo, hi)`.
///
/// A range `[lo, hi)` holds at most `hi - lo` rows, so when the table's rowid span can be
/// reserved, every range writes straight into its own stretch of the output: no per-range
/// vectors, no concatenation copy, each row's memory touched once. Gaps left by missing
/// rowids are closed at the end.
pub fn scan<T: Send, A: Send>(
    ranges: &[(i64, i64)],
    open: impl Fn() -> anyhow::Result<Connection> + Sync,
    read: impl Fn(&Connection, i64, i64, &mut Sink<'_, T>) -> anyhow::Result<A> + Sync,
) -> anyhow::Result<(Vec<T>, Vec<A>)> {
    // One range on a connection of its own; the sink comes back holding the range's rows.
    let run = |(lo, hi): (i64, i64), sink: &mut Sink<'_, T>| read(&open()?, lo, hi, sink);
    // A range open above (see `range_condition`) has no width: read into vectors.
    let width = |(lo, hi): (i64, i64)| if hi > lo { usize::try_from(hi.checked_sub(lo)?).ok() } else { None };
    let widths: Option<Vec<usize>> = ranges.iter().map(|&r| width(r)).collect();
    let total = widths.as_ref().and_then(|w| w.iter().try_fold(0usize, |a, &b| a.checked_add(b)));
    let mut out: Vec<T> = Vec::new();
    let reserved = matches!(total, Some(t) if t <= MAX_RESERVED_ROWS && out.try_reserve_exact(t).is_ok());
    let (Some(widths), true) = (widths, reserved) else {
        let parts: Vec<_> = ranges
            .par_iter()
            .map(|&(lo, hi)| {
                let guess = usize::try_from(hi.wrapping_sub(lo)).unwrap_or(0).min(1 << 20);
                let mut sink = Sink(SinkInner::Owned(Vec::with_capacity(guess)));
                let extra = run((lo, hi), &mut sink)?;
                anyhow::Ok((sink, extra))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut extras = Vec::with_capacity(parts.len());
        for (mut sink, extra) in parts {
            if let SinkInner::Owned(rows) = &mut sink.0 {
                out.append(rows);
            }
            extras.push(extra);
        }
        return Ok((out, extras));
    };
    let mut stretches = Vec::with_capacity(widths.len());
    let mut rest = out.spare_capacity_mut();
    for &w in &widths {
        let (head, tail) = rest.split_at_mut(w);
        stretches.push(head);
        rest = tail;
    }
    // On an error every finished sink drops its own rows; `out` is still empty.
    let parts: Vec<_> = ranges
        .par_iter()
        .zip(stretches)
        .map(|(&range, slots)| {
            let mut sink = Sink(SinkInner::Slots { slots, len: 0 });
            let extra = run(range, &mut sink)?;
            anyhow::Ok((sink, extra))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut lens = Vec::with_capacity(parts.len());
    let mut extras = Vec::with_capacity(parts.len());
    for (sink, extra) in parts {
        // Every sink here is Slots; its rows now belong to `out`, which takes them over below.
        let len = match &sink.0 {
            &SinkInner::Slots { len, .. } => len,
            SinkInner::Owned(_) => 0,
        };
        std::mem::forget(sink);
        lens.push(len);
        extras.push(extra);
    }
    let base = out.as_mut_ptr();
    let (mut start, mut filled) = (0, 0);
    for (w, n) in widths.into_iter().zip(lens) {
        if start != filled {
            // SAFETY: both stretches lie within the reserved capacity; the n rows written at
            // `start` move down over slots that are free (gaps) or already moved; `copy` allows
            // the overlap.
            unsafe { std::ptr::copy(base.add(start), base.add(filled), n) };
        }
        start += w;
        filled += n;
    }
    // SAFETY: the first `filled` slots now hold every written row exactly once.
    unsafe { out.set_len(filled) };
    Ok((out, extras))
}

/// The ORDER BY of a scan, done here in parallel rather than by SQLite's single-threaded
/// sorter: reorder `items` stably by `keys` (one per item). The indices are sorted, not the
/// items (large), and each item then moves once, following the permutation's cycles.
pub fn order_by<T, K: Ord + Sync>(items: &mut [T], keys: &[K]) {
    debug_assert_eq!(items.len(), keys.len());
    let mut order: Vec<usize> = (0..items.len().min(keys.len())).collect();
    order.par_sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    // Position j takes the item at order[j]; a position done is marked order[j] = j.
    for i in 0..order.len() {
        let mut j = i;
        loop {
            let k = order[j];
            order[j] = j;
            if k == i {
                break;
            }
            items.swap(j, k);
            j = k;
        }
    }
}

/// The SQL condition for one range of [`rowid_ranges`]; the last range of a table that ends at
/// rowid `i64::MAX` wraps its exclusive bound, so it is open above.
pub fn range_condition(lo: i64, hi: i64) -> String {
    if hi > lo { format!("rowid >= {lo} AND rowid < {hi}") } else { format!("rowid >= {lo}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rowids: &[i64]) -> Connection {
        fill(Connection::open_in_memory().unwrap(), rowids)
    }

    fn fill(conn: Connection, rowids: &[i64]) -> Connection {
        conn.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
        for r in rowids {
            conn.execute("INSERT INTO t (rowid, v) VALUES (?1, ?2)", rusqlite::params![r, format!("v{r}")]).unwrap();
        }
        conn
    }

    fn read_all(conn: &Connection, parts: Option<usize>) -> Vec<i64> {
        let ranges = rowid_ranges(conn, "t", parts).unwrap();
        let mut out = Vec::new();
        for (lo, hi) in ranges {
            let mut stmt = conn.prepare(&format!("SELECT rowid FROM t WHERE {}", range_condition(lo, hi))).unwrap();
            out.extend(stmt.query_map([], |r| r.get::<_, i64>(0)).unwrap().map(Result::unwrap));
        }
        out
    }

    /// Every row is read exactly once, in rowid order, however the table is split, including
    /// sparse, negative and extreme rowids.
    #[test]
    fn ranges_cover_every_row_once() {
        let cases: [&[i64]; 5] = [
            &[1, 2, 3, 4, 5, 6, 7],
            &[-40, -3, 0, 9, 1_000_000],
            &[i64::MIN, 0, i64::MAX],
            &[i64::MAX - 1, i64::MAX],
            &[42],
        ];
        for rowids in cases {
            let conn = table(rowids);
            for parts in [1, 2, 3, 8, 64] {
                assert_eq!(read_all(&conn, Some(parts)), rowids, "parts {parts}");
            }
        }
        assert!(rowid_ranges(&table(&[]), "t", Some(4)).unwrap().is_empty());
    }

    /// The same table in a file, so that [`scan`] can open one connection per range.
    fn table_file(dir: &tempfile::TempDir, name: &str, rowids: &[i64]) -> std::path::PathBuf {
        let path = dir.path().join(name);
        fill(Connection::open(&path).unwrap(), rowids);
        path
    }

    /// Rows land in the output in rowid order, each once, whether the ranges write into one
    /// reserved output (dense, sparse with gaps to close) or into vectors of their own (a
    /// range ending at i64::MAX, a span too wide to reserve); each range's result comes back.
    #[test]
    fn scan_collects_every_row_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [&[i64]; 5] = [
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            &[1, 2, 5, 9, 10, 11, 30, 31],
            &[-40, -3, 0, 9, 1_000_000],
            &[i64::MAX - 1, i64::MAX],
            &[i64::MIN, 0, i64::MAX],
        ];
        for (i, rowids) in cases.into_iter().enumerate() {
            let path = table_file(&dir, &format!("{i}.db"), rowids);
            let open = || Ok(Connection::open(&path)?);
            for parts in [1, 2, 3, 8] {
                let ranges = rowid_ranges(&open().unwrap(), "t", Some(parts)).unwrap();
                let (rows, counts) = scan(&ranges, open, |conn, lo, hi, sink| {
                    let mut stmt = conn.prepare(&format!("SELECT v FROM t WHERE {}", range_condition(lo, hi)))?;
                    let mut rows = stmt.query([])?;
                    let mut n = 0;
                    while let Some(r) = rows.next()? {
                        sink.push(r.get::<_, String>(0)?)?;
                        n += 1;
                    }
                    Ok(n)
                })
                .unwrap();
                let want: Vec<String> = rowids.iter().map(|r| format!("v{r}")).collect();
                assert_eq!(rows, want, "parts {parts}");
                assert_eq!(counts.iter().sum::<usize>(), rowids.len());
                assert_eq!(counts.len(), ranges.len());
            }
        }
    }

    /// A failing range fails the scan, and the rows other ranges already read are dropped.
    #[test]
    fn scan_error_drops_rows_read() {
        let dir = tempfile::tempdir().unwrap();
        let rowids: Vec<i64> = (1..=40).collect();
        let path = table_file(&dir, "t.db", &rowids);
        let open = || Ok(Connection::open(&path)?);
        let live = std::sync::Arc::new(());
        for wide in [false, true] {
            let mut ranges = rowid_ranges(&open().unwrap(), "t", Some(4)).unwrap();
            if wide {
                // Too wide to reserve: the per-range vectors path.
                ranges[3].1 = i64::MAX;
            }
            let r = scan(&ranges, open, |_, lo, hi, sink| {
                for _ in lo..hi.min(lo + 10) {
                    sink.push(live.clone())?;
                }
                if lo > 20 {
                    bail!("range {lo} fails");
                }
                Ok(())
            });
            assert!(r.is_err());
            assert_eq!(std::sync::Arc::strong_count(&live), 1, "wide {wide}");
        }
    }

    /// order_by is a stable sort by key, whatever the permutation's cycles.
    #[test]
    fn order_by_sorts_stably() {
        let mut seed = 7u64;
        for n in [0, 1, 2, 5, 100, 1000] {
            let keys: Vec<(i64, i64)> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 60) as i64, (seed >> 62) as i64)
                })
                .collect();
            let mut items: Vec<usize> = (0..n).collect();
            order_by(&mut items, &keys);
            let mut want: Vec<usize> = (0..n).collect();
            want.sort_by_key(|&i| keys[i]);
            assert_eq!(items, want, "n {n}");
        }
    }

    #[test]
    fn small_tables_use_one_part() {
        assert_eq!(rowid_ranges(&table(&[1, 2, 3]), "t", None).unwrap().len(), 1);
    }
}
