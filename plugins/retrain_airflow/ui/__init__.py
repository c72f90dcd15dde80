"""The "Retraining" page and the "Retrain report" DAG-run tab of the Airflow UI.

A FastAPI app (`retrain_airflow.ui.routes.create_app`) that ``plugins/retrain_ui_plugin.py`` mounts at
``/retrain``. It only reads what the pipeline leaves behind:

- S3 (through the Airflow connection of conf ``airflow.aws_conn_id``): ``runs/<run>/summary.json``
  (written by the promote task), ``runs/<run>/intake.json`` (per-object counts, reasons, GX Data
  Docs), and the reports it links to, served by an authenticated proxy limited to the report,
  quarantine and runs prefixes;
- the MLflow registry (`retrain.registry.Registry`): versions, aliases and alias history.

Its one write is the rollback form, which triggers ``ner_rollback`` with Airflow's own trigger
function and the user's name. Every route requires an Airflow login and a DAG permission.

Modules, by concern:

- `page_data`: runs from S3 (`RunRecord`, `load_runs`), the registry, the cached object store;
- `charts`: the SVG line charts (F1 trend, training loss) laid out as data;
- `views` + ``templates/``: the HTML, Jinja2 templates with autoescaping on;
- `proxy`: the S3 report proxy (key checks, content types, its no-script policy);
- `rollback`: the rollback form's checks and the ``ner_rollback`` trigger;
- `links`: the DAG ids and the URLs of this app and of Airflow's pages;
- `routes`: the FastAPI app and its guards.

Airflow's plugin scan skips this package (``plugins/.airflowignore``); it is imported on first use of
the app, in the API server only. The DAG-run note lives in `retrain_airflow.run_notes`, so the
scheduler's listener does not import any of this.
"""
