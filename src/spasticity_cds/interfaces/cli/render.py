"""Readable terminal rendering of results and explanations with rich; content stays in the result dicts."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from spasticity_cds.engine.display import BoundariesOf
from spasticity_cds.engine.dosing import steps_text
from spasticity_cds.engine.facts import number_text
from spasticity_cds.interfaces.option_groups import OTHER_OPTIONS, not_to_start, option_groups, taking_words

STATUS_STYLE = {
    "current": "bold cyan",
    "recommended": "bold green",
    "consider": "green",
    "caution": "yellow",
    "avoid": "bold red",
    "contraindicated": "bold white on red",
}
SEVERITY_STYLE = {"critical": "bold white on red", "warning": "bold yellow", "info": "cyan"}


#: Control characters (C0 but tab and newline, DEL, C1): text from a record is printed with them replaced, so that
#: an escape sequence in a name or id cannot retitle or clear the terminal.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def render_result(console: Console, result: dict[str, Any], boundaries_of: BoundariesOf | None = None) -> None:
    """The whole plan for one patient: header, standing, options (ranked, then each with its basis), findings,
    notes, disclaimer. Every statement is shown with its sources, as the JSON result carries them; a number is
    rounded no further than the numbers it is compared with allow (``boundaries_of``, the engine's
    ``fact_boundaries`` for the result's settings)."""
    result = _printable(result)
    console.print(_header(result))
    if not result["in_scope"]:
        _findings(console, result["findings"], boundaries_of)
        _disclaimer(console, result)
        return
    console.print(_standing(result))
    # What needs acting on first (a drug taken to stop or reduce, a drug ordered that is ruled out), then the ranking;
    # the details follow the same order. The result's own order stays the engine's.
    groups = option_groups(result["options"])
    if len(groups) > 1 or groups[0].heading:
        console.print(Text("Options", style="bold"))
    for group in groups:
        table = _options_table(group.options, console.width, group.heading or "Options, ranked")
        if group.key != OTHER_OPTIONS[0]:
            table.title_style = "bold red"
        console.print(table)
    _option_details(console, [option for group in groups for option in group.options])
    _findings(console, result["findings"], boundaries_of)
    if result["input_notes"]:
        console.print(Text("How the record was read", style="bold"))
        for note in result["input_notes"]:
            console.print(f"  - {note}", markup=False)
    _disclaimer(console, result)


def _header(result: dict[str, Any]) -> Panel:
    kb = result["knowledge_base"]
    lines = Text()
    lines.append(f"{result['patient']}", style="bold")
    lines.append(f"   evaluated {result['evaluated_at']}\n")
    lines.append(f"Knowledge base {kb['version']} ({kb['digest'][:19]})   ")
    lines.append(f"settings {', '.join(f'{k}={v}' for k, v in result['settings'].items())}\n")
    confidence = result["confidence"]
    style = "green" if confidence == "high" else "yellow"
    lines.append(f"Confidence: {confidence}", style=style)
    if result["data_gaps"]:
        lines.append(f" ({result['data_gaps']} data gaps - see below)", style=style)
    out_of_date = sum(1 for finding in result["findings"] if finding.get("out_of_date"))
    if out_of_date:
        lines.append(f" ({out_of_date} findings rest on out-of-date results)", style=style)
    return Panel(lines, title="Spasticity treatment plan (ALS)", title_align="left")


def _standing(result: dict[str, Any]) -> Text:
    standing = result["standing"]
    text = Text("Where the patient stands: ", style="bold")
    if standing["current_agents"]:
        parts = [f"{agent} ({role})" for agent, role in zip(standing["current_agents"], standing["roles"], strict=True)]
        text.append("on " + ", ".join(parts))
    else:
        text.append("no antispastic drug treatment on record")
    return text


#: The narrowest terminal on which the options table keeps a Status column of its own. Below it (an 80-column
#: terminal) the status goes under the option's name, so that the Dose column keeps room to be read.
STATUS_COLUMN_FROM = 100
#: The narrowest terminal on which the rules that set each status keep a column of their own, as wide as the longest
#: rule id listed (up to 32). Below it the Dose column would be left too few characters for its words (at 75 columns
#: 15, and 4 at 60: folded mid-word), so the rules go under the dose in one "Dose, why (rules)" column, which at 60
#: columns is 32 wide and holds every rule id whole.
WHY_COLUMN_FROM = 80
NARROW_DOSE_HEADING = "Dose, why (rules)"


def _options_table(options: Iterable[dict[str, Any]], width: int, title: str) -> Table:
    """The options, one row each, with the engine's rank. Every cell wraps and a word wider than its column is folded,
    never cut: the dose is clinical text (rich's default overflow is an ellipsis, which cut the Dose cell to "mg/da…"
    at 80)."""
    status_column = width >= STATUS_COLUMN_FROM
    why_column = width >= WHY_COLUMN_FROM
    table = Table(title=title, title_justify="left", show_lines=False, expand=True)
    table.add_column("#", justify="right", width=3)
    if status_column:
        table.add_column("Option", ratio=2, overflow="fold")
        table.add_column("Status", min_width=15, overflow="fold")
    elif why_column:  # as wide as "contraindicated", the longest status, under the name (a ratio column takes no
        table.add_column("Option, status", width=15, overflow="fold")  # min_width)
    else:  # a third of the room the two text columns share (13: the # column, the borders and padding), at least 15
        table.add_column("Option, status", width=max(15, min(26, (width - 13) // 3)), overflow="fold")
    if why_column:
        table.add_column("Dose", ratio=3, overflow="fold")
        table.add_column("Why this status (rules)", min_width=29, overflow="fold")  # rich widens it to the longest id
    else:
        table.add_column(NARROW_DOSE_HEADING, ratio=1, overflow="fold")
    for option in options:
        name = Text(option["name"])
        status = Text(option["status"], style=STATUS_STYLE[option["status"]])
        if not status_column:
            name.append("\n").append_text(status)
        taking = taking_words(option)
        if taking:
            name.append(f"\n{taking}", style="bold")
        name.append(f"\n{option['role']}", style="dim")
        cells: list[str | Text] = [str(option["rank"]), name, *([status] if status_column else [])]
        if why_column:
            cells += [_dose_cell(option), _why_cell(option)]
        else:  # the rules under the dose, one a line, so that an id is never broken
            dose = _dose_cell(option)
            cells.append(Text(f"{dose}\n" if dose else "").append("why: ", style="dim").append(_why_cell(option)))
        table.add_row(*cells)
    return table


def _why_cell(option: dict[str, Any]) -> str:
    """The rules that set the option's status, one a line, or the ladder's default."""
    return "\n".join(option["because"]) or "ladder default"


def _dose_cell(option: dict[str, Any]) -> str:
    parts: list[str] = []
    daily = option.get("daily_dose")
    if daily:  # the dose taken, or that of the order or proposal
        parts.append(f"{'ordered' if option.get('proposed') else 'now'} {daily['value']:g} {daily.get('unit', '')}")
    plan = option.get("dose_plan") or {}
    parts.extend(_dose_next(plan))
    ceiling = plan.get("ceiling")
    if ceiling and ceiling.get("value") is not None:
        parts.append(f"ceiling {ceiling['value']:g} {ceiling.get('unit', '')}")
    return "\n".join(parts)  # one line each: the now, the next and the ceiling read apart in a narrow column


def _dose_next(plan: dict[str, Any]) -> list[str]:
    """What the plan does next, in a few words: reduce, the next step up, no step up, or start."""
    fit = (plan.get("placement") or {}).get("fit")
    reduction = plan.get("reduction")
    steps = plan.get("steps") or []
    if reduction and "stop" in reduction:
        alternatives = [alternative["name"] for alternative in reduction.get("alternatives") or ()]
        instead = f" - or {' or '.join(alternatives)} instead (alternatives)" if alternatives else ""
        return [_stop_words(reduction["stop"]) + instead]
    if reduction:
        by = f" by {reduction['steps'][-1]['date']}" if reduction["steps"] else ""
        return [f"reduce stepwise to {reduction['target_daily']:g} {reduction['unit']}{by}"]
    if not steps:
        return ["no step up"] if fit in ("no-step-remains", "held", "above-limit") else []
    first = steps[0]
    dose = f"{first['dose']:g} {first['unit']} x{first['times_per_day']}/day"
    if fit == "steps-remain":
        return [f"next {dose} on {first['date']}"]
    if fit == "dose-unknown":
        return [f"dose not readable: standard start {dose}"]
    return [f"start {dose}"]


def _stop_words(stop: dict[str, Any]) -> str:
    """How a withdrawal ends, in a few words: stop today, taper then stop on a date, or a taper not dated."""
    if stop["how"] == "at-once":
        return f"stop today ({stop['date']}), no taper"
    if stop["how"] == "taper":
        return f"taper, stop on {stop['date']}"
    return "taper (not dated)"


def _printable(value: Any) -> Any:
    """``value`` with every string's control characters replaced by U+FFFD."""
    if isinstance(value, str):
        return CONTROL.sub("\ufffd", value)
    if isinstance(value, dict):
        return {key: _printable(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_printable(inner) for inner in value]
    return value


def _cites(citations: Iterable[dict[str, Any]]) -> str:
    """Citations in short: id [evidence status] "locator"; `spasticity-cds kb list citations` gives the titles."""
    return "; ".join(f'{c["id"]} [{c["status"]}] "{c["locator"]}"' for c in citations)


def _option_details(console: Console, options: Iterable[dict[str, Any]]) -> None:
    console.print(Text("Options in detail", style="bold underline"))
    for option in options:
        text = Text()
        text.append(f" {option['rank']}. {option['name']}: ", style="bold")
        text.append(option["status"], style=STATUS_STYLE[option["status"]])
        if option.get("current") and option["status"] != "current":
            text.append("  (taking it now)", style="bold yellow")
        elif option.get("proposed"):
            text.append("  (ordered or proposed)", style="bold yellow")
        text.append(f"\n    {option['summary']}\n")
        text.append(f"    Sources: {_cites(option['citations'])}\n", style="dim")
        outside = option.get("outside_ladder")
        if outside:
            recorded = [part for fact in outside["facts"] for part in (fact.get("note"), *(fact.get("sources") or ()))]
            shown = f" ({', '.join(part for part in recorded if part)})" if any(recorded) else ""
            text.append(f"    Outside the spasticity ladder: {outside['text']}{shown}\n")
        if not_to_start(option):
            daily = option.get("daily_dose") or {}
            record = f" From the record: {', '.join(daily['sources'])}." if daily.get("sources") else ""
            text.append("    Do not start: ordered or proposed for this patient, and ruled out.", style="bold")
            text.append(f"{record}\n")
        for reason in option.get("reasons") or ():
            text.append(f"    Because {reason['rule_id']} v{reason['rule_version']}: {reason['summary']}\n")
            text.append(f"      Sources: {_cites(reason['citations'])}\n", style="dim")
        _dose_plan_lines(text, option.get("dose_plan"))
        _use_lines(text, option)
        console.print(text, end="")


def _use_lines(text: Text, option: dict[str, Any]) -> None:
    """What taking the agent asks for: its monitoring and how to stop it. For a drug not to start these matter only
    if it is started despite this, so they follow under that heading, indented (the plan page folds them)."""
    monitoring = option.get("monitoring") or ()
    taper = option.get("taper")
    indent = "    "
    if not_to_start(option) and (monitoring or taper):
        text.append(f"{indent}If it is started despite this:\n", style="bold")
        indent += "  "
    for item in monitoring:
        text.append(f"{indent}Monitoring: {item['what']}{schedule_text(item.get('schedule'))}\n")
        text.append(f"{indent}  Sources: {_cites(item['citations'])}\n", style="dim")
    if taper:
        text.append(f"{indent}Stopping: {taper['text']}\n")
        text.append(f"{indent}  Sources: {_cites(taper['citations'])}\n", style="dim")


def schedule_text(schedule: dict[str, Any] | None) -> str:
    """A monitoring item's dates for this patient, as a sentence or two after its text ("" when it has none)."""
    if not schedule:
        return ""
    parts = []
    if "next_due" in schedule:
        overdue = " (overdue)" if schedule["overdue"] else ""
        further = f", then {', '.join(schedule['then'])}" if schedule.get("then") else ""
        parts.append(f"Next due {schedule['next_due']}{overdue}{further}.")
    if "review_by" in schedule:
        parts.append(f"Review by {schedule['review_by']}.")
    if "last_done" in schedule:
        parts.append(f"Last done {schedule['last_done']}.")
    if "note" in schedule:
        parts.append(f"Dates: {schedule['note']}.")
    return " " + " ".join(parts)


def _dose_plan_lines(text: Text, plan: dict[str, Any] | None) -> None:
    if not plan:
        return
    placement = plan.get("placement")
    if placement:
        text.append(f"    Where the patient stands: {placement['text']}\n")
        if placement.get("sources"):
            text.append(f"      From the record: {', '.join(placement['sources'])}\n", style="dim")
    fit = placement["fit"] if placement else None
    start = "Start (a new patient)" if fit is not None and fit != "dose-unknown" else "Start"
    for label, key in ((start, "start"), ("Titration", "titration"), ("Maximum", "max_basis")):
        _statement_lines(text, label, plan.get(key))
    steps = plan.get("steps") or []
    if steps:
        label = "Remaining steps" if fit == "steps-remain" else "Steps"
        text.append(f"    {label}: {steps_text(steps)}\n")
    reduction = plan.get("reduction")
    if reduction:
        _reduction_lines(text, reduction)
    renal = plan.get("renal_adjustment")
    if renal:
        note = f" {renal['steps_note']}" if renal.get("steps_note") else ""
        text.append(f"    Kidneys ({renal['basis']}: {renal['action']}): {renal['text']}{note}\n")
        text.append(f"      Sources: {_cites(renal['citations'])}\n", style="dim")
    ceiling = plan.get("ceiling")
    if ceiling and ceiling.get("value") is not None:
        text.append(f"    Ceiling for this patient: {_fact_value(ceiling)}\n")


def _reduction_lines(text: Text, reduction: dict[str, Any]) -> None:
    """A reduction to the ceiling, or a withdrawal (``stop``): its text, dated steps and the statements it rests on
    with their sources; the rules that ruled the agent out are cited under "Because" above."""
    label = "Withdrawal" if "stop" in reduction else "Reduction"
    text.append(f"    {label}: {reduction['text']}\n")
    for alternative in reduction.get("alternatives") or ():
        text.append(f"    Alternative: {alternative['text']}\n")
    if reduction["steps"]:
        text.append(f"    {label} steps: {steps_text(reduction['steps'])}\n")
    _statement_lines(text, "Stop at once", reduction.get("stop_at_once"))
    _statement_lines(text, "Pace", reduction.get("pace"))
    _statement_lines(text, "Taper", reduction.get("taper"))
    because = reduction.get("because") or ()
    if because:
        ruled = ", ".join(f"{reason['rule_id']} v{reason['rule_version']}" for reason in because)
        text.append(f"    Ruled out by: {ruled} (see Because above)\n")


def _statement_lines(text: Text, label: str, statement: dict[str, Any] | None) -> None:
    if statement:
        text.append(f"    {label}: {statement['text']}\n")
        text.append(f"      Sources: {_cites(statement['citations'])}\n", style="dim")


def _findings(console: Console, findings: list[dict[str, Any]], boundaries_of: BoundariesOf | None) -> None:
    if not findings:
        return
    console.print(Text("Findings", style="bold underline"))
    for finding in findings:
        head = Text()
        head.append(f" {finding['severity'].upper()} ", style=SEVERITY_STYLE[finding["severity"]])
        head.append(f" {finding['kind']}  ", style="dim")
        head.append(finding["summary"])
        body = Text(f"    {finding['detail']}\n", style="default")
        cites = "; ".join(f"{c['title']} [{c['status']}] - {c['locator']}" for c in finding["citations"])
        body.append(f"    Sources: {cites}\n", style="dim")
        used = [
            f"{f['name']} = {_fact_value(f, boundaries_of)}" for f in finding["facts"] if f.get("value") is not None
        ]
        if used:
            body.append(f"    Based on: {'; '.join(used)}\n", style="dim")
        conflict = finding.get("conflict")
        if conflict:
            setting = f" (setting {conflict['setting']})" if conflict.get("setting") else ""
            body.append(
                f"    Where sources differ - {conflict['topic']}: {conflict['chosen']} {conflict['why']}{setting}\n"
            )
        if finding.get("missing"):
            body.append(f"    Missing or stale: {', '.join(finding['missing'])}\n", style="yellow")
        body.append(f"    Rule {finding['rule_id']} v{finding['rule_version']}", style="dim")
        console.print(Group(head, body))


def _fact_value(fact: dict[str, Any], boundaries_of: BoundariesOf | None = None) -> str:
    """A fact's value with its unit, date, note and the record entries it was read from; a number rounded no
    further than the numbers it is compared with allow."""
    value = fact["value"]
    if isinstance(value, float):
        text = number_text(value, boundaries_of(str(fact["name"])) if boundaries_of else None)
    else:
        text = str(value)
    if fact.get("unit"):
        text += f" {fact['unit']}"
    details = [part for part in (fact.get("date"), "stale" if fact.get("stale") else None, fact.get("note")) if part]
    details += fact.get("sources") or []
    return text + (f" ({', '.join(details)})" if details else "")


def _disclaimer(console: Console, result: dict[str, Any]) -> None:
    console.print()
    cites = "; ".join(f"{c['title']} [{c['status']}]" for c in result["disclaimer"]["citations"])
    console.print(
        Panel(Text(f"{result['disclaimer']['text']}\n({cites})"), title="Decision support", title_align="left")
    )


def render_explanation(
    console: Console, explanation: dict[str, Any], boundaries_of: BoundariesOf | None = None
) -> None:
    """A rule's tree with the value at every node, then the nodes that decided the outcome."""
    title = f"{explanation['rule_id']} v{explanation['rule_version']} ({explanation['file']}): {explanation['outcome']}"
    tree = Tree(Text(title, style="bold"))
    _grow(tree, explanation["tree"], boundaries_of)
    console.print(tree)
    console.print(Text("Decided by:", style="bold"))
    for node in explanation["deciding"]:
        console.print(f"  {node['path']}: {node['label']} -> {node['value']}", markup=False)


def _grow(parent: Tree, node: dict[str, Any], boundaries_of: BoundariesOf | None) -> None:
    style = {"true": "green", "false": "red", "unknown": "yellow"}[node["value"]]
    label = Text(f"[{node['value']}] ", style=style)
    label.append(node["label"])
    fact = node.get("fact")
    if fact is not None:
        shown = _fact_value(fact, boundaries_of) if fact.get("value") is not None else "missing"
        label.append(f"   (value: {shown})", style="dim")
    branch = parent.add(label)
    for child in node.get("children", []):
        _grow(branch, child, boundaries_of)
