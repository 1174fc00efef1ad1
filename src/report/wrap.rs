//! Prose for the terminal: words broken into lines that fit the width, measured in visible
//! columns (colour sequences take none, wide characters two). Tables are never wrapped.

/// The columns `s` takes on a terminal: colour sequences (ESC [ ... final byte) take none, wide
/// characters (CJK, most emoji) two (Unicode East Asian Width, via unicode-width).
pub fn visible_width(s: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(visible(s).as_str())
}

/// `s` followed by spaces up to `width` visible columns (never truncated).
pub fn pad(s: &str, width: usize) -> String {
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(
        ' ',
        width.saturating_sub(visible_width(s)),
    ));
    out
}

/// `text` as lines of at most `width` visible columns: the first starts with `first`, the
/// others with `indent`. Words are split at spaces only, so a word longer than the room (a
/// URL) overflows its line rather than being broken. A command (from a `sudo` or `export` that
/// follows a colon or semicolon, to the next `;` or the end) is never split: it moves to a line
/// of its own when it does not fit, so that it can be copied whole.
pub fn wrap(first: &str, indent: &str, text: &str, width: usize) -> Vec<String> {
    wrap_then(first, indent, text, "", width)
}

/// [`wrap`] with `tail` after `text`: kept whole (never part of a command) when it fits a line.
pub fn wrap_then(first: &str, indent: &str, text: &str, tail: &str, width: usize) -> Vec<String> {
    let mut words = tokens(text);
    if visible_width(tail) + visible_width(indent) <= width {
        words.extend((!tail.is_empty()).then(|| tail.to_string()));
    } else {
        words.extend(
            tail.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string),
        );
    }
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut used = visible_width(first);
    let mut empty = true;
    for word in words {
        let w = visible_width(&word);
        if !empty && used + 1 + w > width {
            lines.push(std::mem::replace(&mut line, indent.to_string()));
            used = visible_width(indent);
            empty = true;
        }
        if !empty {
            line.push(' ');
            used += 1;
        }
        line.push_str(&word);
        used += w;
        empty = false;
    }
    lines.push(line);
    lines
}

/// The words of `text`, each command kept as one.
fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut command: Option<String> = None;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let starts = matches!(visible(word).as_str(), "sudo" | "export")
            && out
                .last()
                .is_none_or(|p| p.ends_with(':') || p.ends_with(';'));
        match command.as_mut() {
            Some(c) => {
                c.push(' ');
                c.push_str(word);
            }
            None if starts => command = Some(word.to_string()),
            None => out.push(word.to_string()),
        }
        if word.ends_with(';') {
            out.extend(command.take());
        }
    }
    out.extend(command);
    out
}

/// `s` without colour sequences.
fn visible(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&d) {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The width to wrap stdout's text at: the terminal's, or 80 when stdout is not a terminal
/// (a pipe, a file), kept between 40 and 200 columns so that no window makes it unreadable.
pub fn stdout_width() -> usize {
    match console::Term::stdout().size_checked() {
        Some((_, cols)) if cols > 0 => usize::from(cols).clamp(40, 200),
        _ => 80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fit_and_keep_every_word() {
        let text =
            "the IOMMU translates GPU DMA: peer-to-peer copies can hang, return garbage or crawl";
        let lines = wrap("  1. ", "     ", text, 40);
        assert!(lines.iter().all(|l| visible_width(l) <= 40), "{lines:?}");
        assert!(lines[1..].iter().all(|l| l.starts_with("     ")));
        let words: Vec<&str> = lines.iter().flat_map(|l| l.split_whitespace()).collect();
        assert_eq!(words[1..].join(" "), text);
    }

    #[test]
    fn a_command_is_never_split() {
        let text = "install the 535 branch, which the reports confirm works: sudo apt install nvidia-driver-535 && sudo reboot";
        let lines = wrap("  1. ", "     ", text, 80);
        assert_eq!(
            lines,
            [
                "  1. install the 535 branch, which the reports confirm works:",
                "     sudo apt install nvidia-driver-535 && sudo reboot"
            ]
        );
        let text = "to test now: sudo setpci -s 0000:00:03.1 ECAP_ACS+0x6.w=0000; sudo setpci -s 0000:40:01.1 ECAP_ACS+0x6.w=0000";
        let lines = wrap("", "  ", text, 50);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[1].trim_start().starts_with("sudo setpci") && lines[1].ends_with(';'));
        // "sudo" inside prose is a word like any other.
        assert_eq!(tokens("run it with sudo for all facts").len(), 7);
    }

    #[test]
    fn colour_takes_no_room_and_a_long_word_stays_whole() {
        let red = "\x1b[31mred\x1b[0m";
        assert_eq!(visible_width(red), 3);
        let lines = wrap("", "", &format!("{red} {red} {red}"), 7);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let url = "https://github.com/NVIDIA/nccl/issues/1127";
        let lines = wrap("= see: ", "  ", url, 20);
        assert_eq!(lines, vec![format!("= see: {url}")]);
        assert_eq!(visible_width("表"), 2);
    }
}
