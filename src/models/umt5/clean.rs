//! Wan2.1's prompt cleaning (`HuggingfaceTokenizer(clean='whitespace')` in wan/modules/tokenizers.py):
//! `ftfy.fix_text`, then `html.unescape` twice, `strip`, every run of whitespace to one space,
//! `strip` again. ftfy is replaced by the part of it that changes well-formed text (see
//! docs/TEXT_ENCODER.md for what is left out and why that is harmless for prompts).
//! Named HTML references are limited to the HTML 4 names (entities.rs); Python knows ~2,200.

use super::entities::{ENTITIES, LEGACY};
use tokenizers::NormalizedString;

/// Cleans one prompt exactly the way Wan does before tokenizing (up to the ftfy subset).
pub fn wan_clean(text: &str) -> String {
    let t = ftfy_subset(text);
    let t = html_unescape(&html_unescape(&t));
    // `\s+` of Python's `regex` module is Unicode White_Space, which is `char::is_whitespace`;
    // `str.strip()` also strips U+001C..U+001F (ftfy has removed those already; kept for exactness).
    let t = t.trim_matches(is_py_space);
    let mut out = String::with_capacity(t.len());
    let mut in_space = false;
    for c in t.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out.trim_matches(is_py_space).to_string()
}

fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The fixes of `ftfy.fix_text` (ftfy 6 defaults) that apply to well-formed UTF-8, in ftfy's
/// order: per line, HTML entities ending in `;` (only while no line so far contained `<`), C1
/// controls read as Windows-1252, Latin ligatures split, full/half-width forms to normal width,
/// curly quotes to straight ones, line breaks to `\n`, terminal escape sequences and control
/// characters removed, NFC; repeated until nothing changes (as ftfy loops).
/// Not done: mojibake repair (`fix_encoding`), which never fires on well-formed text.
pub fn ftfy_subset(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for segment in text.split_inclusive('\n') {
        // ftfy turns entity decoding off for this and every later line once one contains '<'.
        if segment.contains('<') {
            unescape = false;
        }
        let mut s = segment.to_string();
        loop {
            let before = s.clone();
            if unescape {
                s = ftfy_unescape(&s);
            }
            s = s.chars().map(c1_to_cp1252).collect();
            s = s.chars().flat_map(ligature).collect();
            s = fix_width(&s);
            s = s.chars().map(uncurl).collect();
            s = s
                .replace("\r\n", "\n")
                .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
            s = remove_terminal_escapes(&s);
            s.retain(|c| !is_ftfy_control(c));
            s = nfc(&s);
            if s == before {
                break;
            }
        }
        out.push_str(&s);
    }
    out
}

/// ftfy's ligature table (not plain NFKC: `ﬅ` gives `ſt`, `ŉ` gives `ʼn`).
fn ligature(c: char) -> Vec<char> {
    let s = match c {
        '\u{132}' => "IJ",
        '\u{133}' => "ij",
        '\u{149}' => "\u{2bc}n",
        '\u{1f1}' => "DZ",
        '\u{1f2}' => "Dz",
        '\u{1f3}' => "dz",
        '\u{1c4}' => "D\u{17d}",
        '\u{1c5}' => "D\u{17e}",
        '\u{1c6}' => "d\u{17e}",
        '\u{1c7}' => "LJ",
        '\u{1c8}' => "Lj",
        '\u{1c9}' => "lj",
        '\u{1ca}' => "NJ",
        '\u{1cb}' => "Nj",
        '\u{1cc}' => "nj",
        '\u{fb00}' => "ff",
        '\u{fb01}' => "fi",
        '\u{fb02}' => "fl",
        '\u{fb03}' => "ffi",
        '\u{fb04}' => "ffl",
        '\u{fb05}' => "\u{17f}t",
        '\u{fb06}' => "st",
        _ => return vec![c],
    };
    s.chars().collect()
}

/// Full-width and half-width forms (U+FF01..U+FFEF) to their NFKC form, U+3000 to a space.
fn fix_width(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{3000}' => out.push(' '),
            '\u{ff01}'..='\u{ffef}' => {
                let mut n = NormalizedString::from(c.to_string());
                n.nfkc();
                out.push_str(n.get());
            }
            _ => out.push(c),
        }
    }
    out
}

fn nfc(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    let mut n = NormalizedString::from(s);
    n.nfc();
    n.get().to_string()
}

fn uncurl(c: char) -> char {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    }
}

fn is_ftfy_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{206a}'..='\u{206f}'
        | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

/// Windows-1252's characters for bytes 0x80..0x9F; the five undefined bytes stay themselves
/// (ftfy's "sloppy" codec; Python's html module uses the same table for `&#128;`..`&#159;`).
const CP1252_C1: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}', '\u{178}',
];

fn c1_to_cp1252(c: char) -> char {
    match c {
        '\u{80}'..='\u{9f}' => CP1252_C1[c as usize - 0x80],
        _ => c,
    }
}

/// Removes `ESC [ (digits|;)* letter` sequences.
fn remove_terminal_escapes(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\u{1b}' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == ';') {
                j += 1;
            }
            if j < chars.len() && chars[j].is_ascii_alphabetic() {
                i = j + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn entity(name: &str) -> Option<char> {
    ENTITIES
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| ENTITIES[i].1)
}

/// Python's numeric character reference rules (html.unescape): NUL, surrogates and values past
/// U+10FFFF give U+FFFD, 0x80..0x9F read as Windows-1252, other forbidden code points vanish.
fn numeric_ref(num: Option<u32>) -> String {
    let Some(n) = num else {
        return '\u{fffd}'.to_string(); // more digits than fit: past U+10FFFF
    };
    match n {
        0 => '\u{fffd}'.to_string(),
        0x0d => '\r'.to_string(),
        0x80..=0x9f => CP1252_C1[(n - 0x80) as usize].to_string(),
        0xd800..=0xdfff | 0x11_0000.. => '\u{fffd}'.to_string(),
        0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        _ if n & 0xfffe == 0xfffe => String::new(),
        _ => char::from_u32(n).map(String::from).unwrap_or_default(),
    }
}

fn parse_num(digits: &str, radix: u32) -> Option<u32> {
    u32::from_str_radix(digits, radix).ok()
}

/// A numeric reference body after `&#`: (decimal or hex digits, chars consumed incl. `;`).
fn numeric_body(rest: &[char]) -> Option<(Option<u32>, usize)> {
    let (radix, start) = match rest.first() {
        Some('x') | Some('X') => (16, 1),
        _ => (10, 0),
    };
    let n = rest[start..]
        .iter()
        .take_while(|c| c.is_digit(radix) && c.is_ascii())
        .count();
    if n == 0 {
        return None;
    }
    let digits: String = rest[start..start + n].iter().collect();
    let mut used = start + n;
    if rest.get(used) == Some(&';') {
        used += 1;
    }
    Some((parse_num(&digits, radix), used))
}

/// Python's `html.unescape` (named references limited to the table in entities.rs).
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '&' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let rest = &chars[i + 1..];
        if rest.first() == Some(&'#') {
            if let Some((num, used)) = numeric_body(&rest[1..]) {
                out.push_str(&numeric_ref(num));
                i += 2 + used;
                continue;
            }
            out.push('&');
            i += 1;
            continue;
        }
        // `[^\t\n\f <&#;]{1,32};?`
        let n = rest
            .iter()
            .take(32)
            .take_while(|c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
            .count();
        if n == 0 {
            out.push('&');
            i += 1;
            continue;
        }
        let name: String = rest[..n].iter().collect();
        let semi = rest.get(n) == Some(&';');
        let full = if semi { entity(&name) } else { legacy(&name) };
        if let Some(c) = full {
            out.push(c);
            i += 1 + n + usize::from(semi);
            continue;
        }
        // The longest legacy name that prefixes the reference (at least 2 characters).
        let pre = (2..n).rev().find_map(|x| {
            let p: String = rest[..x].iter().collect();
            legacy(&p).map(|c| (c, x))
        });
        match pre {
            Some((c, x)) => {
                out.push(c);
                i += 1 + x;
            }
            None => {
                out.push('&');
                i += 1;
            }
        }
    }
    out
}

fn legacy(name: &str) -> Option<char> {
    LEGACY.binary_search(&name).ok().and_then(|_| entity(name))
}

/// ftfy's entity decoding: only `&#?[0-9A-Za-z]{1,24};` forms; a numeric reference whose value
/// is `;` stays as written.
fn ftfy_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '&' {
            let hash = chars.get(i + 1) == Some(&'#');
            let start = i + 1 + usize::from(hash);
            let n = chars[start..]
                .iter()
                .take(24)
                .take_while(|c| c.is_ascii_alphanumeric())
                .count();
            if n > 0 && chars.get(start + n) == Some(&';') {
                let body: String = chars[start..start + n].iter().collect();
                let decoded = if hash {
                    let r = html_unescape(&format!("&#{body};"));
                    (!r.contains(';')).then_some(r)
                } else {
                    entity(&body).map(String::from)
                };
                if let Some(d) = decoded {
                    out.push_str(&d);
                    i = start + n + 1;
                    continue;
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_rules() {
        assert_eq!(html_unescape("&amp;lt;"), "&lt;");
        assert_eq!(html_unescape("&ampx &notit; &amp"), "&x ¬it; &");
        assert_eq!(
            html_unescape("&#39;&#x4e2d;&#0;&#150;&#1;"),
            "'中\u{fffd}\u{2013}"
        );
        assert_eq!(html_unescape("a & b &unknown; &#;"), "a & b &unknown; &#;");
    }

    #[test]
    fn ftfy_rules() {
        assert_eq!(ftfy_subset("&amp;lt;b&amp;gt;"), "<b>");
        assert_eq!(ftfy_subset("<b> &amp;"), "<b> &amp;");
        assert_eq!(ftfy_subset("\u{201c}x\u{2019}\u{85}"), "\"x'…");
        assert_eq!(ftfy_subset("\u{1b}[31mred\u{1b}[0m\u{feff}"), "red");
        assert_eq!(ftfy_subset("&#59;"), "&#59;");
    }
}
