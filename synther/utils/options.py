"""How list options are written on the command line and in configs, for every module that reads one."""


def comma_list(value: str | None) -> list[str]:
    """A comma-separated option as a list; the YAML spelling `[a, b]` (as sweeps write lists) is read the same. An
    empty option (`--algorithms ""`, `[]`) or `none` is the empty list: pyrallis hands an empty string on as None or
    'None'."""
    if value is None:
        return []
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if value.strip().lower() in ("", "none"):
        return []
    return [x.strip().strip("'\"") for x in value.split(",") if x.strip()]
