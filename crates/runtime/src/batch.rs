//! Encoded samples → training batches, padded (one sample a row) or packed (several samples a
//! row, attention blocked at sample boundaries and positions restarting per sample).

use super::chat::EncodedSample;
use super::model::Batch;

/// Segment id of padding tokens: never equal to a real sample's.
const PAD_SEGMENT: u32 = u32::MAX;

/// Rows of sample indices for packing: first-fit in the given order, each row at most `row_len`
/// tokens (a longer sample gets a row of its own; callers cap lengths at `row_len`).
pub fn pack_rows(lens: &[usize], row_len: usize) -> Vec<Vec<usize>> {
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        match rows.iter_mut().find(|(used, _)| used + len <= row_len) {
            Some((used, members)) => {
                *used += len;
                members.push(i);
            }
            None => rows.push((len, vec![i])),
        }
    }
    rows.into_iter().map(|(_, m)| m).collect()
}

/// A batch of rows, each the concatenation of its samples, right-padded to the longest row.
pub fn build_batch(rows: &[Vec<&EncodedSample>], pad_id: u32) -> Batch {
    let b = rows.len();
    let t = rows.iter().map(|r| r.iter().map(|s| s.ids.len()).sum::<usize>()).max().unwrap_or(0).max(1);
    let mut input_ids = vec![pad_id; b * t];
    let mut positions = vec![0u32; b * t];
    let mut segments = vec![PAD_SEGMENT; b * t];
    let mut targets = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let mut off = r * t;
        for (seg, s) in row.iter().enumerate() {
            for (j, &id) in s.ids.iter().enumerate() {
                input_ids[off + j] = id;
                positions[off + j] = j as u32;
                segments[off + j] = seg as u32;
                if j > 0 && s.mask[j] {
                    targets.push(((off + j - 1) as u32, id));
                }
            }
            off += s.ids.len();
        }
    }
    Batch { b, t, input_ids, positions, segments, targets }
}

/// One sequence a row, right-padded: what scoring and preference losses batch.
pub fn one_per_row(seqs: &[&EncodedSample], pad_id: u32) -> Batch {
    let rows: Vec<Vec<&EncodedSample>> = seqs.iter().map(|s| vec![*s]).collect();
    build_batch(&rows, pad_id)
}

/// Number of loss tokens in a sample.
pub fn target_count(s: &EncodedSample) -> usize {
    s.mask.iter().skip(1).filter(|m| **m).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(ids: &[u32], reply_from: usize) -> EncodedSample {
        EncodedSample { ids: ids.to_vec(), mask: (0..ids.len()).map(|i| i >= reply_from).collect() }
    }

    #[test]
    fn packing_is_first_fit_within_row_len() {
        assert_eq!(pack_rows(&[5, 4, 3, 6, 2], 8), vec![vec![0, 2], vec![1, 4], vec![3]]);
        assert_eq!(pack_rows(&[10], 8), vec![vec![0]]);
    }

    #[test]
    fn batch_targets_segments_and_positions() {
        let a = enc(&[10, 11, 12], 2);
        let c = enc(&[20, 21], 1);
        let batch = build_batch(&[vec![&a, &c], vec![&c]], 0);
        assert_eq!((batch.b, batch.t), (2, 5));
        assert_eq!(batch.input_ids, vec![10, 11, 12, 20, 21, 20, 21, 0, 0, 0]);
        assert_eq!(batch.positions, vec![0, 1, 2, 0, 1, 0, 1, 0, 0, 0]);
        assert_eq!(&batch.segments[..7], &[0, 0, 0, 1, 1, 0, 0]);
        assert_eq!(batch.segments[7], PAD_SEGMENT);
        // token 12 predicted at 1; 21 predicted at 3 (row 0) and at 5 (row 1).
        assert_eq!(batch.targets, vec![(1, 12), (3, 21), (5, 21)]);
        assert_eq!(target_count(&a), 1);
    }
}
