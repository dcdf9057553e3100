//! Text from elsewhere (the token endpoint's answers and errors, a browser's callback) made safe to
//! print on a terminal.

use std::borrow::Cow;

/// `text` without the characters a terminal acts on instead of showing: control characters (an
/// escape sequence loses its `ESC` and shows as plain text; a line break, tab or carriage return
/// becomes a space, so nothing is overwritten and one line stays one line) and the bidirectional
/// overrides, isolates and marks that reorder what is shown.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .filter_map(|c| match c {
                c if c.is_control() && c.is_whitespace() => Some(' '),
                c if acts_on_terminal(c) => None,
                c => Some(c),
            })
            .collect(),
    )
}

fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escapes_lose_their_control_characters_and_line_breaks_become_spaces() {
        assert_eq!(
            printable("a\u{1b}[31mb\r\nc\td\u{7}\u{9b}e\u{7f}"),
            "a[31mb  c de"
        );
    }

    #[test]
    fn bidirectional_overrides_and_isolates_are_dropped() {
        assert_eq!(printable("x\u{202e}y\u{2066}z\u{200f}"), "xyz");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let text = "project task — ünïcode";
        assert!(matches!(printable(text), std::borrow::Cow::Borrowed(t) if t == text));
    }
}
