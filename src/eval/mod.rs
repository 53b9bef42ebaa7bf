//! Quality metrics against a known truth (GMM teachers). (under construction)
