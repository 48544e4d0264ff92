//! What a media session keeps per m= line index: a short list with a map's methods. A call
//! has one or two m= lines, and a hash map's smallest table holds four entries.

/// Values by m= line index, in the order they were first set.
#[derive(Debug, Clone)]
pub struct LineMap<V> {
    entries: Vec<(usize, V)>,
}

impl<V> Default for LineMap<V> {
    fn default() -> Self {
        LineMap {
            entries: Vec::new(),
        }
    }
}

impl<V> LineMap<V> {
    pub fn get(&self, index: &usize) -> Option<&V> {
        self.entries
            .iter()
            .find(|(i, _)| i == index)
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, index: &usize) -> Option<&mut V> {
        self.entries
            .iter_mut()
            .find(|(i, _)| i == index)
            .map(|(_, v)| v)
    }

    /// Set the value of `index`, returning the one it replaces.
    pub fn insert(&mut self, index: usize, value: V) -> Option<V> {
        if let Some(old) = self.get_mut(&index) {
            return Some(std::mem::replace(old, value));
        }
        // Grown one at a time: most sessions never have a second line.
        self.entries.reserve_exact(1);
        self.entries.push((index, value));
        None
    }

    pub fn remove(&mut self, index: &usize) -> Option<V> {
        let at = self.entries.iter().position(|(i, _)| i == index)?;
        Some(self.entries.remove(at).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&usize, &V)> {
        self.entries.iter().map(|(i, v)| (i, v))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

impl<V: Default> LineMap<V> {
    /// The value of `index`, set to the default first when there is none.
    pub fn get_or_default(&mut self, index: usize) -> &mut V {
        let at = match self.entries.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                self.insert(index, V::default());
                self.entries.len() - 1
            }
        };
        &mut self.entries[at].1
    }
}

#[cfg(test)]
mod tests {
    use super::LineMap;

    #[test]
    fn behaves_as_a_map_by_line_index() {
        let mut m: LineMap<u32> = LineMap::default();
        assert_eq!(m.insert(1, 10), None);
        assert_eq!(m.insert(0, 5), None);
        assert_eq!(m.insert(1, 11), Some(10));
        assert_eq!(m.get(&1), Some(&11));
        *m.get_or_default(2) += 7;
        assert_eq!(m.get(&2), Some(&7));
        assert_eq!(m.remove(&0), Some(5));
        assert_eq!(m.get(&0), None);
        assert_eq!(m.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2]);
        m.clear();
        assert_eq!(m.get(&1), None);
    }
}
