//! Files read whole, in order, in fixed-size pieces: what hashing a model's files and timing
//! the disk both need, without holding a file in memory.

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Reads every file of `paths` in order, `piece` bytes at a time, handing each piece to `each`.
pub fn read_pieces<P: AsRef<Path>>(
    paths: &[P],
    piece: usize,
    mut each: impl FnMut(&[u8]),
) -> Result<()> {
    let mut buf = vec![0u8; piece];
    for p in paths {
        let p = p.as_ref();
        let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(p, e))?;
            if n == 0 {
                break;
            }
            each(&buf[..n]);
        }
    }
    Ok(())
}
