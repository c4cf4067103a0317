//! Stop strings matched on generated text, with hold-back: text that could be the start
//! of a stop string is not emitted until the next tokens decide it.

pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What pushing text produced.
#[derive(Debug, PartialEq, Eq)]
pub struct StopResult {
    /// Text that is final and may be sent.
    pub emit: String,
    /// A stop string matched; `emit` ends right before it and generation must stop.
    pub matched: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    pub fn push(&mut self, text: &str) -> StopResult {
        if self.stops.is_empty() {
            return StopResult { emit: text.to_string(), matched: false };
        }
        self.held.push_str(text);
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(i) = first {
            let emit = self.held[..i].to_string();
            self.held.clear();
            return StopResult { emit, matched: true };
        }
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopResult { emit, matched: false }
    }

    /// The longest suffix of the held text that is a proper prefix of some stop string.
    fn partial_suffix_len(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut best = 0;
        for (i, _) in self.held.char_indices().rev() {
            let suffix = &self.held[i..];
            if suffix.len() >= longest {
                break;
            }
            if self.stops.iter().any(|s| s.starts_with(suffix)) {
                best = suffix.len();
            }
        }
        best
    }

    /// The held text, once generation ended without a match.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let r = m.push(p);
            out.push_str(&r.emit);
            if r.matched {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn matches_across_pieces_and_holds_back_partials() {
        assert_eq!(run(&["END"], &["abc E", "N", "D tail"]), ("abc ".into(), true));
        assert_eq!(run(&["END"], &["abc E", "x"]), ("abc Ex".into(), false));
        let mut m = StopMatcher::new(vec!["\n\n".into()]);
        assert_eq!(m.push("line\n").emit, "line");
        assert_eq!(m.push("more").emit, "\nmore");
        // Earliest of several stops wins; multibyte text is never split.
        assert_eq!(run(&["ü!", "b"], &["aü", "!b"]), ("a".into(), true));
        assert_eq!(run(&["日本"], &["x日", "y"]), ("x日y".into(), false));
        assert_eq!(run(&[], &["free"]), ("free".into(), false));
    }
}
