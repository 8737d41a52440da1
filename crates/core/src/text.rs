//! Text helpers shared by the crates that keep people's and agents' words.

/// `text` cut to at most `max` bytes on a character boundary, with `…` appended when
/// anything was cut.
pub fn clip_marked(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_on_a_character_boundary_and_marks_the_cut() {
        assert_eq!(clip_marked("short", 10), "short");
        assert_eq!(clip_marked("ééé", 3), "é…");
        assert_eq!(clip_marked("abcdef", 3), "abc…");
    }
}
