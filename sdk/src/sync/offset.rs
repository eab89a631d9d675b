//! Offset paging (`offset` + `limit`, `skip` + `take`), the same for every connector that reads
//! that way: the next page starts after the records the upstream sent, not after the number asked
//! for. An upstream that answers fewer than asked (its own page cap below our `limit`, a page cut
//! short) is read on from where it stopped, and no record in between is skipped.

/// Where an offset-paged read stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffsetPaging {
    /// The offset of the next page.
    pub offset: i64,
    /// The last page has been read.
    pub done: bool,
}

impl OffsetPaging {
    /// Moves past a page of `received` records asked for with `limit`. With the upstream's `total`
    /// the read ends at the total or at an empty page; an empty page before the total is a read cut
    /// short, returned as the page's [`super::Page::short`] note (`what` names the list). Without a
    /// total, a page of fewer than `limit` records is the last.
    pub fn advance(&mut self, what: &str, received: i64, limit: i64, total: Option<i64>) -> Option<String> {
        let at = self.offset;
        self.offset += received;
        match total {
            Some(total) => {
                self.done = self.offset >= total || received == 0;
                (received == 0 && at < total)
                    .then(|| format!("{what} at offset {at} returned no records of the {total} announced"))
            }
            None => {
                self.done = received < limit;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_what_was_received() {
        // An upstream that caps its pages at 40 while 100 are asked for: read on, nothing skipped.
        let mut p = OffsetPaging::default();
        assert_eq!(p.advance("items", 40, 100, Some(90)), None);
        assert_eq!(p, OffsetPaging { offset: 40, done: false });
        assert_eq!(p.advance("items", 40, 100, Some(90)), None);
        assert_eq!(p.advance("items", 10, 100, Some(90)), None);
        assert_eq!(p, OffsetPaging { offset: 90, done: true });
        // An empty page before the announced total ends the read and says so.
        let mut p = OffsetPaging { offset: 50, done: false };
        let short = p.advance("items", 0, 100, Some(90));
        assert_eq!(short.as_deref(), Some("items at offset 50 returned no records of the 90 announced"));
        assert!(p.done);
        // Without a total a page of fewer than asked is the last.
        let mut p = OffsetPaging::default();
        assert_eq!(p.advance("items", 100, 100, None), None);
        assert!(!p.done);
        assert_eq!(p.advance("items", 99, 100, None), None);
        assert_eq!(p, OffsetPaging { offset: 199, done: true });
    }
}
