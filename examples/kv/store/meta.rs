//! What the meta protocol needs beyond get/set/delete: per-item fetched,
//! stale and win-token state, vivify on miss, recache wins and
//! invalidation (memcached 1.6's "stale-while-revalidate" scheme).
//!
//! A client that misses with `N`, or reads a stale item or one about to
//! expire (`R`), gets a win token (`W`): it alone should recompute the
//! value. Every other reader sees `Z` (a token is out) and keeps using what
//! it has (an empty vivified item, or the stale value marked `X`) until the
//! winner stores a fresh value, which clears all three bits. The bits live
//! in memory only: the append-only log does not record them, so after a
//! restart every item reads as fresh and unfetched.

use super::*;

/// Options of [`Store::store_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SetOpts {
    /// Use this CAS unique for the new item instead of the next one (`E`).
    pub new_cas: Option<u64>,
    /// With a CAS compare: a CAS older than the item's stores the value
    /// anyway, marked stale (`I`).
    pub invalidate: bool,
    /// The key was given in base64 (`b`); meta reads echo it that way.
    pub binary_key: bool,
}

/// Options of [`Store::meta_get`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MetaGetOpts {
    /// New absolute expiry (`T`).
    pub touch: Option<u64>,
    /// On a miss, create an empty item with this absolute expiry (`N`).
    pub vivify: Option<u64>,
    /// Win a recache token when the item expires before this absolute
    /// time (`R`).
    pub recache: Option<u64>,
    /// Leave the LRU position, fetched bit and access time alone (`u`).
    pub no_bump: bool,
    /// Use this CAS unique for a vivified item (`E`).
    pub new_cas: Option<u64>,
}

/// An item as a meta read sees it.
#[derive(Clone, Debug)]
pub struct MetaHit {
    /// The item (after any touch).
    pub item: Item,
    /// It had been read before this request.
    pub fetched: bool,
    /// Its last access before this request, Unix seconds.
    pub access: u64,
    /// A win token had been handed out before this request (`Z`).
    pub token_was_sent: bool,
    /// It is stale (`X`).
    pub stale: bool,
    /// This request won the right to recache it (`W`).
    pub won: bool,
    /// Its key was stored in base64 (`ms ... b`).
    pub binary_key: bool,
    /// Its absolute expiry before this request's touch.
    pub exptime_before: u64,
}

impl Store {
    /// A meta-protocol read (`mg`): the item with its meta state, applying
    /// touch, vivify and the win-token rules of [`MetaGetOpts`].
    pub fn meta_get(&self, key: &[u8], o: MetaGetOpts) -> Persisted<Option<MetaHit>> {
        bump(&self.stats.cmd_get);
        let now = self.now();
        let i = self.shard_of(key);
        let mut sh = self.lock(i);
        let (found, dead) = self.find(&mut sh, key, now);
        let (idx, created) = match (found, o.vivify) {
            (Some(idx), _) => (idx, false),
            (None, None) => {
                drop(sh);
                self.count_get(&None, dead);
                return Ok(None);
            }
            (None, Some(_)) if key.len() > super::item::KEY_LEN_MAX => {
                drop(sh);
                self.count_get(&None, dead);
                return Ok(None);
            }
            (None, Some(exp)) => {
                let cas = o.new_cas.unwrap_or_else(|| self.next_cas());
                let idx = self.put(&mut sh, None, Value::build(key, &[], 0, exp, now, cas));
                (idx, true)
            }
        };
        if !o.no_bump {
            sh.bump(idx);
        }
        let e = sh.entry(idx);
        let exptime_before = e.exptime();
        if let Some(exp) = o.touch {
            e.set_exptime(exp);
        }
        let before = MetaBits::of(e);
        let recache = match o.recache {
            Some(t) => e.exptime() != 0 && e.exptime() < t,
            None => false,
        };
        let won = !before.token_sent && (created || before.stale || recache);
        if won {
            e.set_bits(bit::TOKEN_SENT, true);
        }
        if !o.no_bump {
            e.set_bits(bit::FETCHED, true);
            e.set_time(now);
        }
        let hit = MetaHit {
            item: item_of(e),
            fetched: before.fetched && !created,
            access: before.access,
            token_was_sent: before.token_sent,
            stale: before.stale,
            won,
            binary_key: before.binary_key,
            exptime_before,
        };
        let ticket = if created {
            self.journal_submit(|| Record::Set {
                key: key.into(),
                value: hit.item.value.clone(),
                flags: 0,
                exptime: hit.item.exptime,
                stored: now,
                cas: hit.item.cas,
            })
        } else if let Some(exp) = o.touch {
            self.journal_submit(|| Record::Touch {
                key: key.into(),
                exptime: exp,
            })
        } else {
            None
        };
        drop(sh);
        if created {
            bump(&self.stats.get_misses);
        } else {
            bump(&self.stats.get_hits);
        }
        if o.touch.is_some() {
            bump(&self.stats.cmd_touch);
            bump(&self.stats.touch_hits);
        }
        self.journal_wait(ticket, key)?;
        if created {
            self.evict(i, Some(key));
        }
        Ok(Some(hit))
    }

    /// A meta-protocol delete (`md`). With `cas != 0` only if the CAS
    /// unique matches. With `invalidate`, the item is kept but marked
    /// stale, with a new CAS unique (`new_cas`, or the next one) and, if
    /// given, a new absolute expiry.
    pub fn meta_delete(
        &self,
        key: &[u8],
        cas: u64,
        invalidate: bool,
        exp: Option<u64>,
        new_cas: Option<u64>,
    ) -> Persisted<DeleteStatus> {
        if !invalidate {
            return self.delete(key, cas);
        }
        self.journal_check()?;
        let now = self.now();
        let mut sh = self.lock(self.shard_of(key));
        let (found, _) = self.find(&mut sh, key, now);
        let Some(idx) = found else {
            let ticket = self.journal_absent(key);
            drop(sh);
            bump(&self.stats.delete_misses);
            self.journal_wait(ticket, key)?;
            return Ok(DeleteStatus::NotFound);
        };
        if cas != 0 && sh.entry(idx).cas() != cas {
            return Ok(DeleteStatus::Exists);
        }
        let new_cas = new_cas.unwrap_or_else(|| self.next_cas());
        let e = sh.entry(idx);
        e.set_bits(bit::STALE, true);
        e.set_bits(bit::TOKEN_SENT, false);
        e.set_cas(new_cas);
        if let Some(exp) = exp {
            e.set_exptime(exp);
        }
        // The new unique (and expiry) are logged as the item's whole state;
        // the stale bit is not (see the module docs).
        let ticket = self.journal_submit(|| Record::Set {
            key: key.into(),
            value: e.clone(),
            flags: e.flags(),
            exptime: e.exptime(),
            stored: e.time(),
            cas: new_cas,
        });
        drop(sh);
        bump(&self.stats.delete_hits);
        self.journal_wait(ticket, key)?;
        Ok(DeleteStatus::Deleted)
    }

    /// An item and its meta state without touching either (`me`):
    /// (item, fetched, last access in Unix seconds).
    pub fn meta_peek(&self, key: &[u8]) -> Option<(Item, bool, u64)> {
        let now = self.now();
        let mut sh = self.lock(self.shard_of(key));
        let (found, _) = self.find(&mut sh, key, now);
        found.map(|idx| {
            let e = sh.entry(idx);
            (item_of(e), e.has(bit::FETCHED), e.time())
        })
    }
}
