"""Airflow DAG: the nightly incremental build (since=LAST), on Dataflow through the Flex Template or on the
Airflow worker itself (RUN_ON). An example to copy into a DAGs folder, not part of the eo_etl package; the
Dataflow task needs apache-airflow-providers-google. Fill in the values in CONFIG.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG

try:
    from airflow.providers.standard.operators.bash import BashOperator  # Airflow 3
except ImportError:
    from airflow.operators.bash import BashOperator  # Airflow 2

RUN_ON = "dataflow"  # or "local": eo-etl build on the Airflow worker (DirectRunner)
CONFIG = {
    "project": "my-project",
    "region": "europe-west4",
    "template": "gs://my-bucket/templates/eo-etl.json",
    "recipe": "gs://my-bucket/recipes/majortom-core-s2l2a.yaml",
    "out": "/mnt/datasets/majortom-core-s2l2a",
    "worker_image": "europe-west4-docker.pkg.dev/my-project/eo-etl/eo-etl-worker:0.1.0",
    "checkout": "/srv/eo-etl",  # for the local build: a checkout with `make` run once
}

with DAG(
    dag_id="eo_etl_majortom_incremental",
    schedule="30 2 * * *",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,  # since=LAST needs the previous build finished
    default_args={"retries": 1, "retry_delay": timedelta(minutes=30)},
) as dag:
    if RUN_ON == "dataflow":
        from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator

        DataflowStartFlexTemplateOperator(
            task_id="build_on_dataflow",
            project_id=CONFIG["project"],
            location=CONFIG["region"],
            wait_until_finished=True,
            body={
                "launchParameter": {
                    "jobName": "eo-etl-majortom-{{ ds_nodash }}",
                    "containerSpecGcsPath": CONFIG["template"],
                    "parameters": {"recipe": CONFIG["recipe"], "out": CONFIG["out"], "since": "LAST"},
                    "environment": {"sdkContainerImage": CONFIG["worker_image"]},
                }
            },
        )
    else:
        BashOperator(
            task_id="build_locally",
            cwd=CONFIG["checkout"],
            bash_command=".venv/bin/eo-etl build pipelines/majortom-core-s2l2a.yaml --since LAST",
        )
