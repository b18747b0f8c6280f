"""The one alert for an execution that ended FAILED, TIMED_OUT or ABORTED.

An EventBridge rule sends the state machine's "Step Functions Execution Status Change"
events here (stacks/alerting.py), so every unsuccessful end alerts, including those no
state can see (execution timeout, abort, `States.Runtime`). The event names the
execution; its history says the rest: which states were still open (where a Redrive
resumes), the failed tables with their errors and the re-run input (the latest state
input holding `failures`, see stacks/workflow.py) and the transform pass reached.

The message holds error names and messages the steps raised; those never contain a
password (pipeline/credentials.py), and nothing else from the execution data is copied.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.orchestration import BACKLOG_ERROR, rerun_tables

DETAIL_TYPE = "Step Functions Execution Status Change"
UNSUCCESSFUL = ("FAILED", "TIMED_OUT", "ABORTED")
MAX_HISTORY_PAGES = 25  # 25,000 events: the most a Standard execution can have
MAX_CAUSE_CHARS = 4_000  # SNS takes 256 KB; an e-mail reader wants much less
REDRIVE_FAILS_AGAIN = {BACKLOG_ERROR}  # a Fail state: a Redrive fails again


def _unsuccessful_detail(event: dict[str, Any]) -> dict[str, Any]:
    """The event's detail, checked: only unsuccessful ends of an execution alert."""
    detail = event.get("detail")
    if event.get("detail-type") != DETAIL_TYPE or not isinstance(detail, dict):
        raise ConfigurationError(
            f"alert event must be a {DETAIL_TYPE!r} event (got detail-type "
            f"{event.get('detail-type')!r}): check the EventBridge rule's pattern"
        )
    if detail.get("status") not in UNSUCCESSFUL or not detail.get("executionArn"):
        raise ConfigurationError(
            f"alert event for status {detail.get('status')!r}: the rule must match only "
            f"{', '.join(UNSUCCESSFUL)}"
        )
    return detail


def _history(sfn: Any, execution_arn: str) -> list[dict[str, Any]]:
    """The execution's events, newest first (sorted by id: whatever order a page has)."""
    kwargs: dict[str, Any] = {
        "executionArn": execution_arn,
        "reverseOrder": True,
        "includeExecutionData": True,
        "maxResults": 1000,
    }
    events: list[dict[str, Any]] = []
    for _ in range(MAX_HISTORY_PAGES):
        page = sfn.get_execution_history(**kwargs)
        events.extend(page["events"])
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    return sorted(events, key=lambda e: int(e["id"]), reverse=True)


def _state_input(event: dict[str, Any]) -> dict[str, Any] | None:
    details = event.get("stateEnteredEventDetails") or {}
    try:
        value = json.loads(details.get("input") or "null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def gather(sfn: Any, execution_arn: str) -> dict[str, Any]:
    """From the history: states entered and never exited (outermost first), the latest
    recorded failures and transform pass."""
    exited: set[str] = set()
    open_states: list[str] = []
    failures: dict[str, Any] | None = None
    transform_call: dict[str, Any] | None = None
    for event in _history(sfn, execution_arn):
        if name := (event.get("stateExitedEventDetails") or {}).get("name"):
            exited.add(name)
        entered = event.get("stateEnteredEventDetails") or {}
        name = entered.get("name")
        if name and name not in exited and name not in open_states:
            open_states.append(name)
        state_input = _state_input(event)
        if state_input:
            if failures is None and isinstance(state_input.get("failures"), dict):
                failures = state_input["failures"]
            if transform_call is None and isinstance(state_input.get("transform_call"), dict):
                transform_call = state_input["transform_call"]
        if failures is not None and transform_call is not None and open_states:
            break
    return {
        "open_states": list(reversed(open_states)),
        "failures": failures or {},
        "transform_call": transform_call or {},
    }


def compose(event: dict[str, Any], sfn: Any, pipeline: str) -> tuple[str, dict[str, Any]]:
    """(subject, message) of the alert for `event`."""
    detail = _unsuccessful_detail(event)
    arn = str(detail["executionArn"])
    found = gather(sfn, arn)
    failures = found["failures"]
    failed_tables = [t for t in failures.get("tables") or [] if isinstance(t, str)]
    status, error = str(detail["status"]), detail.get("error")
    stopped_at = found["open_states"]
    rerun_input = rerun_tables(failed_tables)
    if error in REDRIVE_FAILS_AGAIN:
        recover = (
            "Start a new execution of state_machine_arn with rerun_input (or wait for the "
            "schedule): a Redrive would only fail again."
        )
    else:
        where = stopped_at[0] if stopped_at else "the unsuccessful state"
        recover = (
            "Fix the cause named in error/cause, then Redrive this execution (console: "
            f"the execution, Recover, Redrive from failure): it re-runs {where} (only its "
            "failed iterations, for a Map) and what follows, under the same run id. Or start "
            "a new execution of state_machine_arn with rerun_input."
        )
    cause = detail.get("cause")
    message = {
        "pipeline": pipeline,
        "status": status,
        "run_id": detail.get("name") or arn.rsplit(":", 1)[-1],
        "execution_arn": arn,
        "state_machine_arn": detail.get("stateMachineArn"),
        "stopped_at": stopped_at,
        "error": error,
        "cause": cause[:MAX_CAUSE_CHARS] if isinstance(cause, str) else cause,
        "failed_tables": failed_tables,
        "failures": failures.get("errors") or [],
        "transform_run_id": found["transform_call"].get("run_id"),
        "rerun_input": rerun_input,
        "how_to_recover": recover,
    }
    state = stopped_at[0] if stopped_at else "start"
    subject = f"{pipeline}: execution {status.lower().replace('_', ' ')} at {state}"
    return subject[:100], message


def notify(event: dict[str, Any], *, topic_arn: str, pipeline: str) -> dict[str, Any]:
    """Compose the alert for `event` and publish it (SDK retries: standard mode, 10 tries).

    A failure here propagates: Lambda retries the event twice, then its on-failure
    destination sends the raw event to the same topic, so the alert is never lost.
    """
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 10})
    subject, message = compose(event, boto3.client("stepfunctions", config=config), pipeline)
    boto3.client("sns", config=config).publish(
        TopicArn=topic_arn, Subject=subject, Message=json.dumps(message, indent=2)
    )
    return {"subject": subject, "execution_arn": message["execution_arn"]}
