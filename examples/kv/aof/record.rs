//! Records: encoding, decoding and the checksum (see "File format" in the
//! module docs).

use crate::store::Value;

/// The file header.
pub const MAGIC: &[u8; 8] = b"WKVAOF1\n";

/// Largest payload replay accepts; anything bigger is corruption.
pub(super) const MAX_RECORD: u32 = 1 << 30;

/// A set without its CAS unique (logs written before uniques were kept).
pub(super) const OP_SET: u8 = 1;

const OP_DELETE: u8 = 2;

const OP_TOUCH: u8 = 3;

const OP_FLUSH: u8 = 4;

/// A set with the item's CAS unique.
pub(super) const OP_SET_CAS: u8 = 5;

const OP_CAS_FLOOR: u8 = 6;

/// True for a byte that starts a known payload.
pub(super) fn is_opcode(op: u8) -> bool {
    (OP_SET..=OP_CAS_FLOOR).contains(&op)
}

/// A logged mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The complete new state of a key.
    Set {
        /// Key.
        key: Box<[u8]>,
        /// Value.
        value: Value,
        /// Client flags.
        flags: u32,
        /// Absolute expiry (0 = never).
        exptime: u64,
        /// When it was stored (for delayed flushes).
        stored: u64,
        /// Its CAS unique (0 in logs from before uniques were kept: replay
        /// hands out a new one).
        cas: u64,
    },
    /// A key removed (or found absent by a command that would have
    /// changed it).
    Delete {
        /// Key.
        key: Box<[u8]>,
    },
    /// A key's new expiry.
    Touch {
        /// Key.
        key: Box<[u8]>,
        /// Absolute expiry (0 = never).
        exptime: u64,
    },
    /// `flush_all`: at `at` (0 = immediately).
    Flush {
        /// Absolute time, 0 for now.
        at: u64,
    },
    /// CAS uniques handed out from here on are above `floor` (written when
    /// the log is opened and at the start of a compacted log, so a unique
    /// is never handed out twice, even for items since deleted or lost).
    CasFloor {
        /// The highest unique that may have been handed out.
        floor: u64,
    },
}

impl Record {
    /// Appends the framed record (length, checksum, payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        match self {
            Record::Set {
                key,
                value,
                flags,
                exptime,
                stored,
                cas,
            } => {
                out.push(OP_SET_CAS);
                out.extend_from_slice(&flags.to_le_bytes());
                out.extend_from_slice(&exptime.to_le_bytes());
                out.extend_from_slice(&stored.to_le_bytes());
                out.extend_from_slice(&cas.to_le_bytes());
                out.extend_from_slice(&(key.len() as u16).to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(value);
            }
            Record::Delete { key } => {
                out.push(OP_DELETE);
                out.extend_from_slice(key);
            }
            Record::Touch { key, exptime } => {
                out.push(OP_TOUCH);
                out.extend_from_slice(&exptime.to_le_bytes());
                out.extend_from_slice(key);
            }
            Record::Flush { at } => {
                out.push(OP_FLUSH);
                out.extend_from_slice(&at.to_le_bytes());
            }
            Record::CasFloor { floor } => {
                out.push(OP_CAS_FLOOR);
                out.extend_from_slice(&floor.to_le_bytes());
            }
        }
        let payload_len = (out.len() - start - 8) as u32;
        let crc = crc32(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a payload (without its frame).
    pub fn decode(p: &[u8]) -> Option<Record> {
        let (&op, rest) = p.split_first()?;
        let u64_at = |b: &[u8], i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        match op {
            OP_SET | OP_SET_CAS => {
                let flags = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?);
                let exptime = u64_at(rest, 4)?;
                let stored = u64_at(rest, 12)?;
                let (cas, at) = if op == OP_SET_CAS {
                    (u64_at(rest, 20)?, 28)
                } else {
                    (0, 20)
                };
                let klen = u16::from_le_bytes(rest.get(at..at + 2)?.try_into().ok()?) as usize;
                let key = rest.get(at + 2..at + 2 + klen)?;
                let value = &rest[at + 2 + klen..];
                Some(Record::Set {
                    key: key.into(),
                    value: Value::from(value),
                    flags,
                    exptime,
                    stored,
                    cas,
                })
            }
            OP_DELETE => Some(Record::Delete { key: rest.into() }),
            OP_TOUCH => Some(Record::Touch {
                exptime: u64_at(rest, 0)?,
                key: rest[8..].into(),
            }),
            OP_FLUSH if rest.len() == 8 => Some(Record::Flush {
                at: u64_at(rest, 0)?,
            }),
            OP_CAS_FLOOR if rest.len() == 8 => Some(Record::CasFloor {
                floor: u64_at(rest, 0)?,
            }),
            _ => None,
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), table-driven.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}
