//! The `.pt2` container `torch.export.save` writes: a zip archive (entries
//! stored, not compressed) whose entries live under one root folder:
//!
//! ```text
//! <root>/archive_format                      "pt2"
//! <root>/archive_version                     "0"
//! <root>/byteorder                           "little"
//! <root>/models/model.json                   the serialized ExportedProgram
//! <root>/data/weights/model_weights_config.json
//! <root>/data/weights/weight_N               raw storage bytes
//! <root>/data/constants/model_constants_config.json
//! <root>/data/constants/tensor_N             raw storage bytes
//! ```
//!
//! Entries are borrowed from the caller's bytes (a memory-mapped file), so
//! reading a weight copies it once, into the weight store.

use std::collections::BTreeMap;
use std::io::Cursor;

use zip::CompressionMethod;

/// The archive version this reader understands (torch 2.6 and later).
pub const ARCHIVE_VERSION: &str = "0";

/// A parsed container: entry name (relative to the root) to its bytes.
pub struct Archive<'a> {
    pub root: String,
    entries: BTreeMap<String, &'a [u8]>,
}

impl<'a> Archive<'a> {
    /// Indexes the zip's entries and checks the format markers.
    pub fn parse(bytes: &'a [u8]) -> Result<Archive<'a>, String> {
        let mut zip =
            zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a zip archive: {e}"))?;
        let mut entries = BTreeMap::new();
        let mut root: Option<String> = None;
        for i in 0..zip.len() {
            let f = zip.by_index_raw(i).map_err(|e| format!("zip entry {i}: {e}"))?;
            let name = f.name().to_string();
            if f.is_dir() {
                continue;
            }
            let Some((top, rel)) = name.split_once('/') else {
                return Err(format!("entry {name:?} is outside the archive's root folder"));
            };
            match &root {
                None => root = Some(top.to_string()),
                Some(r) if r != top => {
                    return Err(format!("entries under two root folders, {r:?} and {top:?}"));
                }
                _ => {}
            }
            let (start, size) = (f.data_start(), f.compressed_size());
            let end = start
                .checked_add(size)
                .filter(|&e| e <= bytes.len() as u64)
                .ok_or_else(|| format!("entry {name:?} runs past the end of the file (truncated?)"))?;
            if f.compression() != CompressionMethod::Stored {
                return Err(format!(
                    "entry {name:?} is compressed ({:?}); torch.export.save stores entries uncompressed",
                    f.compression()
                ));
            }
            entries.insert(rel.to_string(), &bytes[start as usize..end as usize]);
        }
        let root = root.ok_or("the archive is empty")?;
        let a = Archive { root, entries };
        let format = a.text("archive_format")?;
        if format.trim() != "pt2" {
            return Err(format!("archive_format is {format:?}, not \"pt2\""));
        }
        let version = a.text("archive_version")?;
        if version.trim() != ARCHIVE_VERSION {
            return Err(format!(
                "archive_version {:?} is not supported (optc reads version {ARCHIVE_VERSION}, written by torch 2.6 and later)",
                version.trim()
            ));
        }
        if let Ok(order) = a.text("byteorder") {
            if order.trim() != "little" {
                return Err(format!(
                    "byteorder {:?}: only little-endian archives are supported",
                    order.trim()
                ));
            }
        }
        Ok(a)
    }

    /// An entry's bytes (`rel` is relative to the root folder).
    pub fn get(&self, rel: &str) -> Result<&'a [u8], String> {
        self.entries
            .get(rel)
            .copied()
            .ok_or_else(|| format!("the archive has no entry {}/{rel}", self.root))
    }

    pub fn has(&self, rel: &str) -> bool {
        self.entries.contains_key(rel)
    }

    /// An entry as UTF-8 text.
    pub fn text(&self, rel: &str) -> Result<&'a str, String> {
        std::str::from_utf8(self.get(rel)?).map_err(|_| format!("{}/{rel} is not UTF-8 text", self.root))
    }

    /// The names of the programs in `models/` (`model` for torch.export.save).
    pub fn models(&self) -> Vec<String> {
        self.entries
            .keys()
            .filter_map(|k| k.strip_prefix("models/")?.strip_suffix(".json"))
            .map(str::to_string)
            .collect()
    }
}
