//! Reading one large table on several connections at once (decrypt-read's message table,
//! window's messages.db).
//!
//! SQLite decodes, and SQLCipher decrypts, every page on the thread that steps the query, so
//! one connection reads a database at the speed of one core however many there are. A rowid
//! table's B-tree keeps each rowid range on its own pages, so connections that each read one
//! range touch disjoint pages and together read the file at the speed of all cores.

use anyhow::Context;
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

/// Run `read(conn, index, lo, hi)` for every range (`index` is its position in `ranges`),
/// each on its own connection from `open`, in parallel; the results come back in range order.
/// `read` selects its rows with [`range_condition`]`(lo, hi)` and streams them wherever they
/// go (decrypt-read: into the range's own part of the raw table).
pub fn scan<A: Send>(
    ranges: &[(i64, i64)],
    open: impl Fn() -> anyhow::Result<Connection> + Sync,
    read: impl Fn(&Connection, usize, i64, i64) -> anyhow::Result<A> + Sync,
) -> anyhow::Result<Vec<A>> {
    ranges.par_iter().enumerate().map(|(i, &(lo, hi))| read(&open()?, i, lo, hi)).collect()
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

    /// Each range runs on its own connection and every row is read once; the results come
    /// back in range order, dense or sparse, up to a range open above at i64::MAX.
    #[test]
    fn scan_reads_every_row_once_in_range_order() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [&[i64]; 4] = [
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            &[1, 2, 5, 9, 10, 11, 30, 31],
            &[-40, -3, 0, 9, 1_000_000],
            &[i64::MIN, 0, i64::MAX],
        ];
        for (i, rowids) in cases.into_iter().enumerate() {
            let path = table_file(&dir, &format!("{i}.db"), rowids);
            let open = || Ok(Connection::open(&path)?);
            for parts in [1, 2, 3, 8] {
                let ranges = rowid_ranges(&open().unwrap(), "t", Some(parts)).unwrap();
                let per_range = scan(&ranges, open, |conn, index, lo, hi| {
                    let mut stmt = conn.prepare(&format!("SELECT v FROM t WHERE {}", range_condition(lo, hi)))?;
                    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
                    Ok((index, rows))
                })
                .unwrap();
                assert!(per_range.iter().enumerate().all(|(i, (index, _))| *index == i));
                let rows: Vec<String> = per_range.into_iter().flat_map(|(_, rows)| rows).collect();
                let want: Vec<String> = rowids.iter().map(|r| format!("v{r}")).collect();
                assert_eq!(rows, want, "parts {parts}");
            }
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
