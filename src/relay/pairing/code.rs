//! Pairing codes: drawn from a CSPRNG, normalised from what a person typed.

/// The alphabet and length of codes, from `[pairing]` in the config.
#[derive(Debug, Clone)]
pub struct CodeFormat {
    alphabet: Vec<char>,
    length: usize,
}

impl CodeFormat {
    /// A format of `length` characters from `alphabet` (validated by the config).
    pub fn new(alphabet: &str, length: usize) -> Self {
        Self {
            alphabet: alphabet.chars().collect(),
            length,
        }
    }

    /// A fresh random code. nanoid draws from the OS CSPRNG without modulo bias.
    pub fn generate(&self) -> String {
        nanoid::nanoid!(self.length, &self.alphabet)
    }

    /// What a person typed, trimmed and upper-cased; `None` if it cannot be a code.
    pub fn normalise(&self, input: &str) -> Option<String> {
        let code = input.trim().to_uppercase();
        let valid =
            code.chars().count() == self.length && code.chars().all(|c| self.alphabet.contains(&c));
        valid.then_some(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHABET: &str = "346789ABCDEFGHJKLMNPQRTUVWXY";

    #[test]
    fn generated_codes_have_the_configured_length_and_alphabet() {
        let format = CodeFormat::new(ALPHABET, 6);
        for _ in 0..1000 {
            let code = format.generate();
            assert_eq!(code.len(), 6);
            assert!(code.chars().all(|c| ALPHABET.contains(c)), "{code}");
            assert_eq!(format.normalise(&code), Some(code));
        }
    }

    #[test]
    fn input_is_trimmed_and_upper_cased() {
        let format = CodeFormat::new(ALPHABET, 6);
        assert_eq!(format.normalise("  h4f7kn \n"), Some("H4F7KN".into()));
    }

    #[test]
    fn look_alikes_wrong_lengths_and_symbols_are_not_codes() {
        let format = CodeFormat::new(ALPHABET, 6);
        for bad in ["H4F7K0", "H4F7KNN", "H4F", "", "H4F 7K", "H4F7K!", "ÄÄÄÄÄÄ"] {
            assert_eq!(format.normalise(bad), None, "{bad:?}");
        }
    }
}
