"""The command line: `llmlab SUBCOMMAND ...`.

Each module in this package other than `main` is a subcommand: it defines
`register(subparsers)`, which adds its parser and sets `handler` to a function of the parsed
arguments. Handlers import the library lazily so that `llmlab --help` stays fast.
"""
