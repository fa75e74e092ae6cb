"""The ``civt-pipe`` command line: typer commands that parse options, build a config, call one
function. No logic lives here."""
