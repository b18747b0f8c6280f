"""The Step Functions state machine: extract every table, transform, load, catch up, report.

The orchestration policy is pipeline/orchestration.py's, rule for rule (the local runner
executes it in-process; tests/statemachine/test_policy.py runs the same scenarios through
both). Here are its rules, with the states that carry them out:

1. **Every requested table is extracted to completion, within a bound.** `ExtractTables`
   gives each table a Map iteration (at most `extractConcurrency` at a time) under the
   execution name as run id; `MoreRows` continues a table that says `more` under the
   `next_run_id` it names (`NextChunk`), at most `extractMaxInvocations` invocations
   (`extract_max_calls` locally); `Extracted` records `more_left` when the bound stopped it.
2. **A table whose extract fails is recorded, and the other tables carry on.** After its
   retries (transient errors and Lambda service errors, backoff with full jitter), the
   iteration's Catch goes to `TableFailed`, which records the error and the run id, window,
   row count and invocation number the table had reached.
3. **Transform while it reports `more`, then load once.** `Transform` under the execution
   name, then `NextTransform` derives `<name>.t2`, `.t3`, ... (the same
   `TRANSFORM_ROUND_FORMAT`) while `MoreToTransform` sees `more`, at most
   `transformMaxRuns` calls; then `Load`. A held lease (`TransformBusyError`) is retried
   like every transient error. Neither has a Catch: a failed transform or load fails the
   execution right there, and a Redrive re-runs that call with the same run id.
4. **Failed tables are extracted once more, then transformed and loaded.**
   `AnyTableFailed` -> `ExtractFailedTables`, a Map over the recorded resume points (no
   Catch, no ItemSelector): if a table fails again the execution fails in that Map, and a
   Redrive re-runs only its failed iterations (the Map is inline), from where each
   stopped. When all succeed: `TablesCaughtUp` -> `NextTransform` (at least one more call)
   -> ... -> `Load` again.
5. **A backlog left at the bound fails the pass after its load.** `BacklogCleared` ->
   the `TransformBacklogLimit` Fail state (`BACKLOG_ERROR`, cause `BACKLOG_CAUSE`); a
   Redrive of it only fails again: start a new execution.

And three rules that exist only in AWS:

6. Alerts are not states: an EventBridge rule on the execution's FAILED, TIMED_OUT and
   ABORTED status changes invokes the alert function (pipeline/alerts.py), which reads the
   execution's history (failed state, error, failed tables, re-run input) and publishes
   one message. Alarms never notify for what fails an execution (stacks/monitoring.py).
7. The execution timeout is the worst case rules 1-5 and 8 allow with every retry spent
   (`worst_case_seconds`), so it never cuts a run the configuration permits.
8. With context reportEnabled, `Report` builds the HTML report once, after the last load
   (`AnyTableFailed` found none left to catch up), before `BacklogCleared`. No Catch: a
   failed report fails the execution there (the loads stand) and a Redrive re-runs just
   the report.

Every payload between states is a small pointer (table, counts, manifest key): data
never flows through the state machine. Retry/Catch match on Python exception class
names, which the handlers keep unchanged.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

import pipeline
from pipeline import errors
from pipeline.catalog import TABLE_NAMES
from pipeline.orchestration import BACKLOG_CAUSE, BACKLOG_ERROR, TRANSFORM_ROUND_FORMAT
from stacks.config import PipelineConfig
from stacks.functions import STEPS, PipelineFunctions, retention

JsonPath = sfn.JsonPath

LAMBDA_SERVICE_ERRORS = (
    "Lambda.ServiceException",
    "Lambda.TooManyRequestsException",
    "Lambda.SdkClientException",
    "Lambda.AWSLambdaException",
    "Lambda.ClientExecutionTimeoutException",
)


def _family(cls: type[Exception]) -> set[str]:
    """The names of `cls` and of every subclass, at any depth."""
    return {cls.__name__}.union(*(_family(sub) for sub in cls.__subclasses__()))


def transient_error_names() -> tuple[str, ...]:
    """Every `TransientError` subclass in the package, wherever it is defined.

    Step Functions matches error names exactly (no class hierarchy), so the Retry rule
    lists the whole family; importing every module first finds subclasses that live next
    to the step that raises them.
    """
    for module in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        importlib.import_module(module.name)
    return tuple(sorted(_family(errors.TransientError)))


TRANSIENT_ERRORS = transient_error_names()

# Retry policy for transient pipeline errors: 10 s, 20 s, 40 s, 80 s (capped at 120 s),
# each with full jitter, so a restarting source gets a few minutes to come back.
TRANSIENT_RETRY = {"interval": 10, "max_attempts": 4, "backoff_rate": 2.0, "max_delay": 120}
# Lambda's own hiccups (throttles, service errors) clear quickly.
SERVICE_RETRY = {"interval": 2, "max_attempts": 5, "backoff_rate": 2.0, "max_delay": 60}


def retry_waits(policy: dict[str, float]) -> float:
    """The longest total wait one retrier can add (full jitter only ever shortens it)."""
    return sum(
        min(policy["interval"] * policy["backoff_rate"] ** k, policy["max_delay"])
        for k in range(int(policy["max_attempts"]))
    )


def task_worst_seconds(function_timeout_s: float) -> float:
    """One Lambda task with every attempt of both retriers spent, each to the timeout."""
    attempts = 1 + TRANSIENT_RETRY["max_attempts"] + SERVICE_RETRY["max_attempts"]
    waits = retry_waits(TRANSIENT_RETRY) + retry_waits(SERVICE_RETRY)
    return attempts * function_timeout_s + waits


def worst_case_seconds(config: PipelineConfig) -> float:
    """The longest execution the policy (module docstring) allows with these settings.

    Extract: ceil(tables / concurrency) waves of at most `extractMaxInvocations` tasks,
    twice (every table may fail and be caught up from where it stopped); transform:
    `transformMaxRuns` passes plus the one after a catch-up; load: twice; the report
    (with reportEnabled): once.
    """
    task = task_worst_seconds(max(step.timeout.to_seconds() for step in STEPS))
    waves = math.ceil(len(TABLE_NAMES) / config.extract_concurrency)
    extract = 2 * waves * config.extract_max_invocations * task
    report = task if config.report_enabled else 0.0
    return extract + (config.transform_max_runs + 1) * task + 2 * task + report


def execution_timeout(config: PipelineConfig) -> Duration:
    """The worst case rounded up to whole hours (Step Functions allows up to a year)."""
    hours = math.ceil(worst_case_seconds(config) / 3600)
    if hours > 365 * 24:
        raise ValueError(
            f"these settings allow executions of {hours} hours, over Step Functions' "
            "one-year limit: lower extractMaxInvocations or transformMaxRuns"
        )
    return Duration.hours(hours)


def add_retries(task: sfn.TaskStateBase) -> None:
    """Transient pipeline errors and Lambda service errors: exponential backoff, full jitter."""
    policies = ((TRANSIENT_ERRORS, TRANSIENT_RETRY), (LAMBDA_SERVICE_ERRORS, SERVICE_RETRY))
    for names, policy in policies:
        task.add_retry(
            errors=list(names),
            interval=Duration.seconds(policy["interval"]),
            max_attempts=policy["max_attempts"],
            backoff_rate=policy["backoff_rate"],
            max_delay=Duration.seconds(policy["max_delay"]),
            jitter_strategy=sfn.JitterType.FULL,
        )


def invoke(
    scope: Construct,
    state_id: str,
    function: lambda_.IFunction,
    payload: dict[str, Any],
    result_selector: dict[str, Any],
    result_path: str,
) -> tasks.LambdaInvoke:
    task = tasks.LambdaInvoke(
        scope,
        state_id,
        lambda_function=function,
        payload=sfn.TaskInput.from_object(payload),
        result_selector=result_selector,
        result_path=result_path,
        retry_on_service_exceptions=False,
    )
    add_retries(task)
    return task


class PipelineWorkflow(Construct):
    """The Standard state machine and its log group."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PipelineConfig,
        functions: PipelineFunctions,
    ) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        self.functions = functions
        definition = (
            self._configure()
            .next(self._extract_map())
            .next(self._summarise())
            .next(self._transform_and_load())
        )
        # No fixed name, deleted with the stack: a retained log group with a fixed name
        # makes the next create (after a rolled-back first deploy, or `cdk destroy`) fail
        # with "already exists". CloudFormation generates a unique name.
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=retention(config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.timeout = execution_timeout(config)
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=config.prefix,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            comment="totesys-etl: extract each table, transform, load, catch up failed tables",
            timeout=self.timeout,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group,
                level=sfn.LogLevel.ALL,
                include_execution_data=False,
            ),
        )

    # -- states ------------------------------------------------------------------------
    def _configure(self) -> sfn.Chain:
        """Merge the execution input over the defaults: every table, no backfill window."""
        defaults = sfn.Pass(
            self,
            "Defaults",
            comment="All catalog tables; since/until empty = incremental from the watermark",
            parameters={
                "defaults": {
                    "tables": list(TABLE_NAMES),
                    "since": "",
                    "until": "",
                    # options of each table's reconciliation (docs/OPERATIONS.md)
                    "allow_mass_delete": False,
                    "repair": False,
                },
                "input.$": "$",
            },
        )
        merge = sfn.Pass(
            self,
            "Configure",
            comment='Execution input (e.g. {"tables": [...]}) overrides the defaults',
            parameters={"config.$": "States.JsonMerge($.defaults, $.input, false)"},
        )
        return defaults.next(merge)

    def _extract_loop(self, suffix: str) -> tuple[tasks.LambdaInvoke, sfn.Chain]:
        """Extract -> (more and under the bound?) -> NextChunk -> Extract ... -> Extracted.

        The item is `{table, run_id, since, until, rows, invocation}`: everything an
        iteration needs to continue, so a failed one can be picked up where it stopped.
        """
        max_invocations = self.config.extract_max_invocations
        extract = invoke(
            self,
            f"Extract{suffix}",
            self.functions.extract,
            payload={
                "table.$": "$.table",
                "run_id.$": "$.run_id",
                "since.$": "$.since",
                "until.$": "$.until",
                "allow_mass_delete.$": "$.allow_mass_delete",
                "repair.$": "$.repair",
            },
            result_selector={
                "status.$": "$.Payload.status",
                "rows.$": "$.Payload.rows",
                "more.$": "$.Payload.more",
                "next_run_id.$": "$.Payload.next_run_id",
                "manifest.$": "$.Payload.manifest",
            },
            result_path="$.result",
        )
        next_chunk = sfn.Pass(
            self,
            f"NextChunk{suffix}",
            comment=(
                "The table needs another invocation: continue under the next run id (its "
                "resume record carries the window, so since/until are not repeated)"
            ),
            parameters={
                "table.$": "$.table",
                "run_id.$": "$.result.next_run_id",
                "since": "",
                "until": "",
                "allow_mass_delete.$": "$.allow_mass_delete",
                "repair.$": "$.repair",
                "rows.$": "States.MathAdd($.rows, $.result.rows)",
                "invocation.$": "States.MathAdd($.invocation, 1)",
            },
        )
        done = sfn.Pass(
            self,
            f"Extracted{suffix}",
            comment="more_left: the invocation bound was reached; the next execution goes on",
            parameters={
                "table.$": "$.table",
                "status.$": "$.result.status",
                "rows.$": "States.MathAdd($.rows, $.result.rows)",
                "more_left.$": "$.result.more",
                "extracted_table.$": "$.table",
            },
        )
        more = (
            sfn.Choice(self, f"MoreRows{suffix}")
            .when(
                sfn.Condition.and_(
                    sfn.Condition.boolean_equals("$.result.more", True),
                    sfn.Condition.number_less_than("$.invocation", max_invocations),
                ),
                next_chunk.next(extract),
            )
            .otherwise(done)
        )
        return extract, extract.next(more)

    def _extract_map(self) -> sfn.Map:
        extract, loop = self._extract_loop("")
        failed = sfn.Pass(
            self,
            "TableFailed",
            comment=(
                "Record the failure and where the table stopped; the other tables carry on "
                "and ExtractFailedTables picks this one up after the load"
            ),
            parameters={
                "table.$": "$.table",
                "status": "failed",
                "failed_table.$": "$.table",
                "failure": {
                    "table.$": "$.table",
                    "error.$": "$.failure.Error",
                    "cause.$": "$.failure.Cause",
                },
                "resume": {
                    "table.$": "$.table",
                    "run_id.$": "$.run_id",
                    "since.$": "$.since",
                    "until.$": "$.until",
                    "allow_mass_delete.$": "$.allow_mass_delete",
                    "repair.$": "$.repair",
                    "rows.$": "$.rows",
                    "invocation.$": "$.invocation",
                },
            },
        )
        extract.add_catch(failed, errors=[sfn.Errors.ALL], result_path="$.failure")
        tables = sfn.Map(
            self,
            "ExtractTables",
            comment="One extract per table, bounded to spare the source database",
            items_path="$.config.tables",
            max_concurrency=self.config.extract_concurrency,
            item_selector={
                "table.$": "$$.Map.Item.Value",
                "run_id.$": "$$.Execution.Name",
                "since.$": "$.config.since",
                "until.$": "$.config.until",
                "allow_mass_delete.$": "$.config.allow_mass_delete",
                "repair.$": "$.config.repair",
                "rows": 0,
                "invocation": 1,
            },
            result_path="$.extracted",
        )
        tables.item_processor(loop)
        return tables

    def _summarise(self) -> sfn.Pass:
        return sfn.Pass(
            self,
            "Summarise",
            comment=(
                "Split the Map results into extracted and failed tables. Each item carries "
                "extracted_table or failed_table, and a wildcard path over a key that is "
                "absent everywhere yields [] (a filter expression matching nothing is an error)"
            ),
            parameters={
                "run_id.$": "$$.Execution.Name",
                "succeeded.$": "$.extracted[*].extracted_table",
                "failures": {
                    "tables.$": "$.extracted[*].failed_table",
                    "errors.$": "$.extracted[*].failure",
                    "resume.$": "$.extracted[*].resume",
                },
                # The transform loop's counter: invocation n runs under run_id.
                "transform_call": {"n": 1, "run_id.$": "$$.Execution.Name"},
            },
        )

    def _transform_and_load(self) -> sfn.Chain:
        fns = self.functions
        max_runs = self.config.transform_max_runs
        transform = invoke(
            self,
            "Transform",
            fns.transform,
            payload={"run_id.$": "$.transform_call.run_id", "tables.$": "$.succeeded"},
            result_selector={
                "status.$": "$.Payload.status",
                "rows_in.$": "$.Payload.rows_in",
                "quarantined.$": "$.Payload.quarantined",
                "manifest.$": "$.Payload.manifest",
                # true: batches over TRANSFORM_MAX_ROWS were left: transform again
                "more.$": "$.Payload.more",
            },
            result_path="$.transform",
        )
        load = invoke(
            self,
            "Load",
            fns.load,
            payload={"run_id.$": "$.run_id"},
            result_selector={"status.$": "$.Payload.status", "rows.$": "$.Payload.rows"},
            result_path="$.load",
        )
        next_n = JsonPath.math_add(JsonPath.number_at("$.transform_call.n"), 1)
        next_transform = sfn.Pass(
            self,
            "NextTransform",
            comment=(
                "Transform again under the derived run id <execution name>.t<n> "
                "(n = 2, 3, ...): batches were left, or failed tables were caught up"
            ),
            parameters={
                "n": next_n,
                "run_id": JsonPath.format(TRANSFORM_ROUND_FORMAT, JsonPath.execution_name, next_n),
            },
            result_path="$.transform_call",
        )
        backlog_cleared = (
            sfn.Choice(self, "BacklogCleared")
            .when(sfn.Condition.boolean_equals("$.transform.more", True), self._backlog_limit())
            .otherwise(sfn.Succeed(self, "Done"))
        )
        caught_up = sfn.Pass(
            self,
            "TablesCaughtUp",
            comment="Every failed table is extracted now: transform and load them too",
            result=sfn.Result.from_object({"tables": [], "errors": [], "resume": []}),
            result_path="$.failures",
        )
        any_failed = (
            sfn.Choice(self, "AnyTableFailed")
            .when(
                sfn.Condition.is_present("$.failures.tables[0]"),
                self._extract_failed_tables().next(caught_up),
            )
            .otherwise(self._report(backlog_cleared))
        )
        more_to_transform = (
            sfn.Choice(
                self,
                "MoreToTransform",
                comment=f"Loop while the transform leaves batches, at most {max_runs} times",
            )
            .when(
                sfn.Condition.and_(
                    sfn.Condition.boolean_equals("$.transform.more", True),
                    sfn.Condition.number_less_than("$.transform_call.n", max_runs),
                ),
                next_transform,
            )
            .otherwise(load.next(any_failed))
        )
        next_transform.next(transform)
        caught_up.next(next_transform)
        return transform.next(more_to_transform)

    def _report(self, then: sfn.IChainable) -> sfn.IChainable:
        """Rule 8 (with context reportEnabled): the HTML report, once, after the last
        load (every table caught up), then `then`. No Catch: a failed report fails the
        execution there (the loads stand) and a Redrive re-runs just the report."""
        if self.functions.report is None:
            return then
        report = invoke(
            self,
            "Report",
            self.functions.report,
            payload={"run_id.$": "$.run_id"},
            result_selector={"keys.$": "$.Payload.keys", "charts.$": "$.Payload.charts"},
            result_path="$.report",
        )
        return report.next(then)

    def _extract_failed_tables(self) -> sfn.Map:
        """Rule 4: the failed tables again, each from where it stopped; no Catch.

        The items are the recorded resume points themselves (no ItemSelector), so a
        redriven iteration, or one that never started, has all it needs.
        """
        _, loop = self._extract_loop("Again")
        again = sfn.Map(
            self,
            "ExtractFailedTables",
            comment=(
                "Tables whose extract failed, again, after the others were loaded. A failure "
                "here fails the execution: Redrive re-runs only the failed iterations"
            ),
            items_path="$.failures.resume",
            max_concurrency=self.config.extract_concurrency,
            result_path="$.caught_up",
        )
        again.item_processor(loop)
        return again

    def _backlog_limit(self) -> sfn.Fail:
        """Rule 5: a transform still reported `more` after transformMaxRuns passes.

        What those passes transformed has been loaded; the rest waits for the next
        execution. A real backlog that big is unlikely (4M rows a pass), so this usually
        means a bug that keeps reporting `more`: fail loudly rather than spin.
        """
        return sfn.Fail(
            self,
            BACKLOG_ERROR,
            comment="Start a new execution (or wait for the schedule): a Redrive fails again",
            error=BACKLOG_ERROR,
            cause_path=JsonPath.format(
                BACKLOG_CAUSE,
                JsonPath.string_at("$.transform_call.n"),
                JsonPath.string_at("$.transform_call.run_id"),
            ),
        )
