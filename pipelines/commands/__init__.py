"""One module per `loyalty-etl` sub-command. Each defines `register(subparsers)`; keep them thin."""
