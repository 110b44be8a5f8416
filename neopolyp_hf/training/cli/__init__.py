"""The command-line tools as the installed package carries them: `neopolyp-predict`, `neopolyp-evaluate`,
`neopolyp-export` and `neopolyp-push` (train/*.py in a checkout run the same code)."""
