"""The Step Functions state machine: extract every table (Map) -> transform -> load -> report.

Shape (docs/OPERATIONS.md walks through it):

    Configure (input over defaults) -> ExtractTables (Map, bounded concurrency)
        item: Extract -(more?)-> NextChunk -> Extract ... -> Extracted
              Extract Catch States.ALL -> TableFailed (recorded, the other tables go on)
    -> Summarise -> Transform -> MoreToTransform?
        more and under the bound -> NextTransform (run id <name>.t<n>) -> Transform ...
        otherwise -> Load -> [Report, with context reportEnabled] -> AnyTableFailed?
            yes -> NotifyTablesFailed (SNS: tables, errors, execution, re-run input) -> Fail
            no  -> BacklogCleared?
                yes -> Succeed
                no (bound reached) -> NotifyBacklogLimit (SNS) -> Fail
    Transform/Load Catch States.ALL -> NotifyStepFailed (SNS) -> Fail
    Report Catch States.ALL -> NotifyReportFailed (SNS: the load stands) -> Fail

The run id is the execution name; every payload between states is a small pointer
(table, counts, manifest key): data never flows through the state machine (R15).
A transform takes at most TRANSFORM_MAX_ROWS rows and says `more` when it left batches;
the machine then transforms again under `<execution name>.t2`, `.t3`, ... (each id
idempotent, so a retry or a redrive replays) up to `transformMaxRuns` invocations, and
loads once at the end (the load takes every processed batch not yet in its ledger).
Retry/Catch match on Python exception class names, which the handlers keep unchanged.
"""

from __future__ import annotations

import importlib
import pkgutil

from aws_cdk import Duration
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

import pipeline
from pipeline import errors
from pipeline.catalog import TABLE_NAMES
from stacks.config import PipelineConfig
from stacks.functions import PipelineFunctions, retention

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
    payload: dict,
    result_selector: dict,
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
        topic: sns.ITopic,
        topic_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        self.functions = functions
        self.topic = topic

        definition = (
            self._configure()
            .next(self._extract_map())
            .next(self._summarise())
            .next(self._transform_and_load())
        )
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/vendedlogs/states/{config.prefix}",
            retention=retention(config.log_retention_days),
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=config.prefix,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            comment="totesys-etl: extract each table, transform, load; alert on failure",
            timeout=Duration.hours(2),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group,
                level=sfn.LogLevel.ALL,
                include_execution_data=False,
            ),
        )
        # The SNS task adds sns:Publish on the topic; encrypted topics also need the key.
        topic_key.grant(self.state_machine.role, "kms:GenerateDataKey", "kms:Decrypt")

    # -- states ------------------------------------------------------------------------
    def _configure(self) -> sfn.Chain:
        """Merge the execution input over the defaults: every table, no backfill window."""
        defaults = sfn.Pass(
            self,
            "Defaults",
            comment="All catalog tables; since/until empty = incremental from the watermark",
            parameters={
                "defaults": {"tables": list(TABLE_NAMES), "since": "", "until": ""},
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

    def _extract_map(self) -> sfn.Map:
        fn = self.functions.extract
        extract = invoke(
            self,
            "Extract",
            fn,
            payload={
                "table.$": "$.table",
                "run_id.$": "$.run_id",
                "since.$": "$.since",
                "until.$": "$.until",
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
        failed = sfn.Pass(
            self,
            "TableFailed",
            comment="Record the failure; the other tables carry on",
            parameters={
                "table.$": "$.table",
                "status": "failed",
                "failed_table.$": "$.table",
                "failure": {
                    "table.$": "$.table",
                    "error.$": "$.failure.Error",
                    "cause.$": "$.failure.Cause",
                },
            },
        )
        extract.add_catch(failed, errors=[sfn.Errors.ALL], result_path="$.failure")
        next_chunk = sfn.Pass(
            self,
            "NextChunk",
            comment=(
                "The table needs another invocation: continue under the next run id (its "
                "resume record carries the window, so since/until are not repeated)"
            ),
            parameters={
                "table.$": "$.table",
                "run_id.$": "$.result.next_run_id",
                "since": "",
                "until": "",
                "rows.$": "States.MathAdd($.rows, $.result.rows)",
            },
        )
        done = sfn.Pass(
            self,
            "Extracted",
            parameters={
                "table.$": "$.table",
                "status.$": "$.result.status",
                "rows.$": "States.MathAdd($.rows, $.result.rows)",
                "extracted_table.$": "$.table",
            },
        )
        more = (
            sfn.Choice(self, "MoreRows")
            .when(sfn.Condition.boolean_equals("$.result.more", True), next_chunk.next(extract))
            .otherwise(done)
        )
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
                "rows": 0,
            },
            result_path="$.extracted",
        )
        tables.item_processor(extract.next(more))
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
                "failed_tables.$": "$.extracted[*].failed_table",
                "failed.$": "$.extracted[*].failure",
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
        step_failed = self._notify_step_failed()
        for task in (transform, load):
            task.add_catch(step_failed, errors=[sfn.Errors.ALL], result_path="$.failure")
        after_load: sfn.INextable = load
        if fns.report is not None:
            report = invoke(
                self,
                "Report",
                fns.report,
                payload={"run_id.$": "$.run_id"},
                result_selector={"keys.$": "$.Payload.keys", "charts.$": "$.Payload.charts"},
                result_path="$.report",
            )
            report.add_catch(
                self._notify_report_failed(), errors=[sfn.Errors.ALL], result_path="$.failure"
            )
            load.next(report)
            after_load = report

        next_n = JsonPath.math_add(JsonPath.number_at("$.transform_call.n"), 1)
        next_transform = sfn.Pass(
            self,
            "NextTransform",
            comment=(
                "Batches were left over TRANSFORM_MAX_ROWS: transform again under the "
                "derived run id <execution name>.t<n> (n = 2, 3, ...)"
            ),
            parameters={
                "n": next_n,
                "run_id": JsonPath.format("{}.t{}", JsonPath.execution_name, next_n),
            },
            result_path="$.transform_call",
        )
        any_failed = (
            sfn.Choice(self, "AnyTableFailed")
            .when(sfn.Condition.is_present("$.failed_tables[0]"), self._notify_tables_failed())
            .otherwise(
                sfn.Choice(self, "BacklogCleared")
                .when(
                    sfn.Condition.boolean_equals("$.transform.more", True),
                    self._notify_backlog_limit(),
                )
                .otherwise(sfn.Succeed(self, "Done"))
            )
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
                next_transform.next(transform),
            )
            .otherwise(load)
        )
        after_load.next(any_failed)
        return transform.next(more_to_transform)

    def _alert_then_fail(
        self,
        describe_id: str,
        notify_id: str,
        subject: str,
        fields: dict[str, object],
        fail: sfn.Fail,
    ) -> sfn.Chain:
        """Describe the problem (with where to find the execution), publish it, then fail."""
        alert = sfn.Pass(
            self,
            describe_id,
            parameters={
                "alert": {
                    "pipeline": self.config.prefix,
                    "run_id.$": "$$.Execution.Name",
                    "execution_arn.$": "$$.Execution.Id",
                    "state_machine_arn.$": "$$.StateMachine.Id",
                    **fields,
                }
            },
            result_path="$.notice",
        )
        publish = tasks.SnsPublish(
            self,
            notify_id,
            topic=self.topic,
            subject=subject,
            message=sfn.TaskInput.from_json_path_at("States.JsonToString($.notice.alert)"),
            result_path=JsonPath.DISCARD,
        )
        return alert.next(publish).next(fail)

    def _notify_tables_failed(self) -> sfn.Chain:
        alert_fields = {
            "problem": "extract failed for some tables; the other tables were loaded",
            "failed_tables.$": "$.failed_tables",
            "failures.$": "$.failed",
            "rerun_input": {"tables.$": "$.failed_tables"},
            "how_to_rerun": (
                "Fix the cause named in failures, then start a new execution of "
                "state_machine_arn with rerun_input as its input."
            ),
        }
        fail = sfn.Fail(
            self,
            "TablesFailed",
            error="TablesFailed",
            cause_path=JsonPath.format(
                "Tables failed: {}. Re-run them with input {}",
                JsonPath.json_to_string(JsonPath.list_at("$.failed_tables")),
                JsonPath.json_to_string(JsonPath.object_at("$.notice.alert.rerun_input")),
            ),
        )
        return self._alert_then_fail(
            "DescribeTableFailures",
            "NotifyTablesFailed",
            f"{self.config.prefix}: tables failed to extract",
            alert_fields,
            fail,
        )

    def _notify_step_failed(self) -> sfn.Chain:
        alert_fields = {
            "problem": ("transform or load failed after retries; nothing from this run was loaded"),
            "transform_run_id.$": "$.transform_call.run_id",
            "error.$": "$.failure.Error",
            "cause.$": "$.failure.Cause",
            "failed_tables.$": "$.failed_tables",
            "rerun_input": {"tables": []},
            "how_to_rerun": (
                "Fix the cause, then redrive this execution, or start a new execution "
                "with rerun_input (transform and load pick up every batch not yet "
                "loaded)."
            ),
        }
        fail = sfn.Fail(
            self, "StepFailed", error_path="$.failure.Error", cause_path="$.failure.Cause"
        )
        return self._alert_then_fail(
            "DescribeStepFailure",
            "NotifyStepFailed",
            f"{self.config.prefix}: transform or load failed",
            alert_fields,
            fail,
        )

    def _notify_report_failed(self) -> sfn.Chain:
        """The report failed after retries: the load it followed is committed and stands."""
        alert_fields = {
            "problem": (
                "the HTML report failed after retries; the load before it succeeded and its "
                "data is in the warehouse"
            ),
            "error.$": "$.failure.Error",
            "cause.$": "$.failure.Cause",
            "failed_tables.$": "$.failed_tables",
            "how_to_rerun": (
                "Fix the cause (see the report function's logs); the next execution that "
                "loads writes the report again (start one, or wait for the schedule)."
            ),
        }
        fail = sfn.Fail(
            self, "ReportFailed", error_path="$.failure.Error", cause_path="$.failure.Cause"
        )
        return self._alert_then_fail(
            "DescribeReportFailure",
            "NotifyReportFailed",
            f"{self.config.prefix}: report failed (the load succeeded)",
            alert_fields,
            fail,
        )

    def _notify_backlog_limit(self) -> sfn.Chain:
        """The loop bound: a transform still reported `more` after transformMaxRuns runs.

        What those runs transformed has been loaded; the rest waits for the next execution.
        A real backlog that big is unlikely (4M rows a run), so this usually means a bug
        that keeps reporting `more`: fail loudly rather than spin.
        """
        max_runs = self.config.transform_max_runs
        alert_fields = {
            "problem": (
                f"transform still reported more batches after {max_runs} invocations "
                "(the transformMaxRuns bound); what they transformed was loaded"
            ),
            "transform_runs.$": "$.transform_call.n",
            "last_transform_run_id.$": "$.transform_call.run_id",
            "last_transform.$": "$.transform",
            "rerun_input": {"tables": []},
            "how_to_rerun": (
                "If the backlog is real (see last_transform.rows_in), start a new "
                "execution with rerun_input or wait for the schedule: each run takes "
                "the next batches. If transform keeps reporting more without rows, "
                "it is a bug: check the transform function's logs."
            ),
        }
        fail = sfn.Fail(
            self,
            "TransformBacklogLimit",
            error="TransformBacklogLimit",
            cause_path=JsonPath.format(
                "Transform still reported more batches after {} invocations (last run id {}); "
                "what they transformed was loaded, the rest waits for the next execution",
                JsonPath.string_at("$.transform_call.n"),
                JsonPath.string_at("$.transform_call.run_id"),
            ),
        )
        return self._alert_then_fail(
            "DescribeBacklogLimit",
            "NotifyBacklogLimit",
            f"{self.config.prefix}: transform backlog left after {max_runs} runs",
            alert_fields,
            fail,
        )
