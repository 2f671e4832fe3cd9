//! Relations for records written before promises recorded them: a store upgraded
//! from such a format derives each promise's creator and family once, from what
//! those versions kept (a chosen id's `durable:parent` tag, the id of a child).

use std::collections::{BTreeMap, HashSet};

use crate::promise::{Promise, creator_of};

/// The tag that named a chosen id's creator before [`Promise::parent`] did.
const LEGACY_PARENT_TAG: &str = "durable:parent";

/// Sets `parent` and `root` of every promise of `promises` (all of a store's, by id)
/// whose `root` is empty. Its creator is what the tag names or, for an id under
/// another, the body that minted it; a promise whose creator is not in the store (a
/// purge took it), or that a chain of tags leads in a circle, is top-level.
pub(crate) fn relate(promises: &mut BTreeMap<String, Promise>) {
    let claimed = |p: &Promise| match p.tags.get(LEGACY_PARENT_TAG) {
        Some(creator) => Some(creator.clone()),
        None if p.id.contains('.') => creator_of(&p.id).map(str::to_owned),
        None => None,
    };
    let ids: Vec<String> = promises.iter().filter(|(_, p)| p.root.is_empty()).map(|(id, _)| id.clone()).collect();
    for id in ids {
        // Up the chain of creators to one whose family is known, or to the top.
        let (mut chain, mut seen, mut at) = (Vec::new(), HashSet::new(), id);
        let root = loop {
            let p = &promises[&at];
            if !p.root.is_empty() {
                break p.root.clone();
            }
            seen.insert(at.clone());
            let parent = claimed(p).filter(|c| promises.contains_key(c) && !seen.contains(c));
            chain.push((at.clone(), parent.clone()));
            match parent {
                Some(parent) => at = parent,
                None => break at.clone(),
            }
        };
        for (id, parent) in chain {
            let p = promises.get_mut(&id).expect("read above");
            p.parent = parent;
            p.root = root.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::relate;
    use crate::promise::{Param, Promise, State};

    fn old(id: &str, tags: &[(&str, &str)]) -> Promise {
        Promise {
            id: id.into(),
            parent: None,
            root: String::new(),
            state: State::Resolved,
            param: Param::Timer,
            value: None,
            timeout_at: crate::NEVER,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ikey_create: None,
            ikey_settle: None,
            created_at: 0,
            settled_at: Some(0),
            undo: None,
            canceling: false,
        }
    }

    #[test]
    fn old_records_join_their_creators_family() {
        let mut all: BTreeMap<String, Promise> = [
            old("order", &[]),
            old("order.1", &[]),
            old("order.r1", &[]),
            old("order.r1.2", &[]),
            old("charge-7", &[("durable:parent", "order.r1.2")]),
            old("charge-7.1", &[]),
            old("orphan", &[("durable:parent", "purged-long-ago")]),
            old("a", &[("durable:parent", "b")]),
            old("b", &[("durable:parent", "a")]),
        ]
        .into_iter()
        .map(|p| (p.id.clone(), p))
        .collect();
        relate(&mut all);
        let rel = |id: &str| (all[id].parent.clone(), all[id].root.clone());
        assert_eq!(rel("order"), (None, "order".into()));
        assert_eq!(rel("order.r1"), (Some("order".into()), "order".into()));
        assert_eq!(rel("order.r1.2"), (Some("order".into()), "order".into()), "a retry's child is the body's");
        assert_eq!(rel("charge-7"), (Some("order.r1.2".into()), "order".into()));
        assert_eq!(rel("charge-7.1"), (Some("charge-7".into()), "order".into()));
        assert_eq!(rel("orphan"), (None, "orphan".into()), "a creator that is gone leaves a top-level promise");
        assert!(all["a"].parent.is_none() || all["b"].parent.is_none(), "a circle of tags is broken");
        assert_eq!(all["a"].root, all["b"].root);
    }
}
