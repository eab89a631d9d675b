//! [`Pages`]: what every paging loop of every pack counts its pages with, so a hostile or broken
//! upstream cannot keep one read going until the step's timeout.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use super::{HttpError, redact};

/// The pages of one read of one list (one entity, one scope): at most `upstream.max_pages` of them,
/// and no cursor twice.
///
/// A loop calls [`Pages::next`] before it asks for each page, with what asks for it: the next link,
/// the cursor or page token the upstream gave (`None` for the first page, and for offset or
/// page-number paging, whose positions the loop computes itself and which only count). A position
/// seen before in this read means the upstream is looping: the read ends with
/// [`HttpError::Paging`], as it does past the page limit. Positions are kept as 64-bit keyed hashes,
/// so a read of 100,000 pages holds under a megabyte of them.
#[derive(Debug, Clone)]
pub struct Pages {
    max: u64,
    read: u64,
    seen: HashSet<u64>,
    keys: RandomState,
}

impl Pages {
    pub fn new(max_pages: u64) -> Pages {
        Pages { max: max_pages.max(1), read: 0, seen: HashSet::new(), keys: RandomState::new() }
    }

    /// Counts the page about to be read, asked for by `position`; an error ends the read (permanent:
    /// the same upstream answers the same way).
    pub fn next(&mut self, position: Option<&str>) -> Result<(), HttpError> {
        if self.read >= self.max {
            return Err(HttpError::Paging(format!(
                "more than {} pages in one read (upstream.max_pages): the upstream does not end its list",
                self.max
            )));
        }
        if let Some(position) = position
            && !self.seen.insert(self.keys.hash_one(position))
        {
            return Err(HttpError::Paging(format!(
                "page cursor {} repeated after {} pages: the upstream is looping",
                redact::link(position),
                self.read
            )));
        }
        self.read += 1;
        Ok(())
    }

    /// Pages counted so far.
    pub fn read(&self) -> u64 {
        self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_cursor_ends_the_read() {
        let mut pages = Pages::new(100);
        pages.next(None).unwrap();
        pages.next(Some("https://api.example/items?page=2&token=abc")).unwrap();
        pages.next(Some("https://api.example/items?page=3&token=abc")).unwrap();
        let e = pages.next(Some("https://api.example/items?page=2&token=abc")).unwrap_err().to_string();
        assert_eq!(
            e,
            "page cursor https://api.example/items?page=***&token=*** repeated after 3 pages: the upstream is looping"
        );
        assert_eq!(pages.read(), 3);
    }

    #[test]
    fn positions_computed_by_the_loop_only_count() {
        let mut pages = Pages::new(3);
        for _ in 0..3 {
            pages.next(None).unwrap();
        }
        let e = pages.next(None).unwrap_err().to_string();
        assert!(e.starts_with("more than 3 pages in one read (upstream.max_pages)"), "{e}");
    }
}
