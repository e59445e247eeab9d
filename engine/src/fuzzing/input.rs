//! How the targets that read a sequence split their input, and how the twins build one.

/// Splits the input into sections: a u16 little-endian length, then that many bytes (fewer
/// when the input ends first).
pub(super) fn split_sections(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (section, rest) = rest.split_at(len);
        data = rest;
        Some(section)
    })
}

/// Splits the input into steps: a selector byte that says what to do, then a section.
pub(super) fn split_steps(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&selector, rest) = data.split_first()?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (section, rest) = rest.split_at(len);
        data = rest;
        Some((selector, section))
    })
}

/// The input that splits into exactly these sections.
///
/// # Panics
///
/// If a section is 64 KiB or longer (its length would not fit the prefix).
pub fn sections<S: AsRef<[u8]>>(sections: impl IntoIterator<Item = S>) -> Vec<u8> {
    let mut input = Vec::new();
    for section in sections {
        push_section(&mut input, section.as_ref());
    }
    input
}

/// The input that splits into exactly these steps (selector, section).
///
/// # Panics
///
/// If a section is 64 KiB or longer (its length would not fit the prefix).
pub fn steps<S: AsRef<[u8]>>(steps: impl IntoIterator<Item = (u8, S)>) -> Vec<u8> {
    let mut input = Vec::new();
    for (selector, section) in steps {
        input.push(selector);
        push_section(&mut input, section.as_ref());
    }
    input
}

fn push_section(input: &mut Vec<u8>, section: &[u8]) {
    let len = u16::try_from(section.len()).expect("a section is shorter than 64 KiB");
    input.extend_from_slice(&len.to_le_bytes());
    input.extend_from_slice(section);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_inputs_split_back_into_their_parts() {
        let parts: [&[u8]; 3] = [b"ab", b"", b"cde"];
        let input = sections(parts);
        assert_eq!(split_sections(&input).collect::<Vec<_>>(), parts);
        let script = [(7u8, &b"xy"[..]), (0, b""), (255, b"z")];
        let input = steps(script);
        assert_eq!(split_steps(&input).collect::<Vec<_>>(), script);
    }

    #[test]
    fn a_short_last_section_is_cut_not_dropped() {
        let split: Vec<_> = split_sections(&[5, 0, 1, 2]).collect();
        assert_eq!(split, [&[1u8, 2][..]]);
        // A selector without a whole length ends the script.
        assert_eq!(split_steps(&[3, 1]).count(), 0);
    }
}
