//! Moving an index to the current record layouts (docs/format.md, section 11): each format
//! version that changed a record kept in the index copies the trees holding it into new trees
//! of the new layout, once. `records_v1`, `records_v2` and `records_v3` name their steps; they run in order.

use crate::{Index, IndexError, Result};

/// The one entry left in each old tree once it is dropped, which does not decode: a gateway of
/// the old version that opens the moved index fails on it, rather than taking the empty tree for
/// an empty index (whose collector would delete the blobs of objects it no longer sees).
pub(crate) const MOVED: &[u8] = b"\xffmoved to a later format version";

/// Re-encodes one record of an old tree in the layout of its new tree.
pub(crate) type Conversion = fn(&[u8]) -> Result<Vec<u8>>;

/// One format version's move of the index.
pub(crate) struct Migration {
    /// Each tree whose records the version changed: its name, the name of the tree that holds
    /// them since, and the conversion of one record.
    pub trees: &'static [(&'static str, &'static str, Conversion)],
    /// The `meta` key that says the new trees hold every record.
    pub migrated: &'static str,
    /// The `meta` key that says the old trees were dropped after the copy.
    pub dropped: &'static str,
    /// The version whose gateways wrote the old trees, for the message of a refused open.
    pub old_version: u8,
}

impl Index {
    /// Moves an index written by an older format version to the current record layouts, one
    /// version at a time.
    pub(crate) fn migrate_records(&self) -> Result<()> {
        self.migrate(&crate::records_v1::MIGRATION)?;
        self.migrate(&crate::records_v2::MIGRATION)?;
        self.migrate(&crate::records_v3::MIGRATION)
    }

    /// Copies the records of the old trees into the new ones, converted, then marks the index
    /// migrated and drops the old trees. A crash before the mark leaves the old trees whole,
    /// and the copy starts again from empty new trees.
    fn migrate(&self, step: &Migration) -> Result<()> {
        let old_trees = |index: &Index| -> Vec<&'static str> {
            let names = index.db.tree_names();
            step.trees.iter().filter(|(old, _, _)| names.iter().any(|name| name.as_ref() == old.as_bytes())).map(|(old, _, _)| *old).collect()
        };
        if self.meta.contains_key(step.dropped)? {
            // The old trees are gone for good: one that holds records beside its marker was
            // written by a gateway of the old version, and dropping it would lose them.
            for name in old_trees(self) {
                if self.db.open_tree(name)?.iter().keys().any(|key| key.map_or(true, |key| key != MOVED)) {
                    return Err(IndexError::Migration(format!(
                        "the tree {name:?} was written by a gateway of format version {} after this index moved on; \
                         rebuild the index from the upstream (`tensorgate index rebuild`)",
                        step.old_version
                    )));
                }
            }
            return Ok(());
        }
        if !self.meta.contains_key(step.migrated)? {
            for (old_name, new_name, convert) in step.trees {
                let (old, new) = (self.db.open_tree(old_name)?, self.db.open_tree(new_name)?);
                new.clear()?;
                for entry in old.iter() {
                    let (key, value) = entry?;
                    if key != MOVED {
                        new.insert(key, convert(&value)?)?;
                    }
                }
            }
            self.meta.insert(step.migrated, &[])?;
            self.flush()?;
        }
        // Also after a crash that came between the mark and the drops.
        for name in old_trees(self) {
            self.db.drop_tree(name.as_bytes())?;
        }
        for (old_name, _, _) in step.trees {
            self.db.open_tree(old_name)?.insert(MOVED, &[])?;
        }
        self.meta.insert(step.dropped, &[])?;
        self.flush()
    }
}
