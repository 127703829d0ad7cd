//! Reading one large table on several connections at once.
//!
//! SQLCipher decrypts every page on the thread that steps the query, so one connection reads
//! a database at the speed of one core however many there are. A rowid table's B-tree keeps
//! each rowid range on its own pages, so connections that each read one range decrypt disjoint
//! pages and together read the file at the speed of all cores.

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

/// Run `read(conn, lo, hi)` for every range, each on its own connection from `open`, in
/// parallel; results come back in range order. `read` selects its rows with
/// [`range_condition`]`(lo, hi)`.
pub fn scan<T: Send>(
    ranges: &[(i64, i64)],
    open: impl Fn() -> anyhow::Result<Connection> + Sync,
    read: impl Fn(&Connection, i64, i64) -> anyhow::Result<Vec<T>> + Sync,
) -> anyhow::Result<Vec<T>> {
    let parts: Vec<Vec<T>> = ranges
        .par_iter()
        .map(|&(lo, hi)| {
            let conn = open()?;
            read(&conn, lo, hi)
        })
        .collect::<anyhow::Result<_>>()?;
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for p in parts {
        out.extend(p);
    }
    Ok(out)
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
        let conn = Connection::open_in_memory().unwrap();
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

    #[test]
    fn small_tables_use_one_part() {
        assert_eq!(rowid_ranges(&table(&[1, 2, 3]), "t", None).unwrap().len(), 1);
    }
}
