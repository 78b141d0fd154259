#!/bin/sh
# Cloud Scheduler job that launches the eo-etl Flex Template every night with since=LAST (incremental build).
# It POSTs launch.json (edit its placeholders first) to the Flex Template launch endpoint, authenticated as a service
# account that may start Dataflow jobs (roles/dataflow.developer) and act as the worker service account.
set -eu
PROJECT=${PROJECT:?set PROJECT}
REGION=${REGION:-europe-west4}
SCHEDULER_SA=${SCHEDULER_SA:?set SCHEDULER_SA, e.g. eo-etl-scheduler@$PROJECT.iam.gserviceaccount.com}

gcloud scheduler jobs create http eo-etl-majortom-nightly \
  --project="$PROJECT" \
  --location="$REGION" \
  --schedule="30 2 * * *" \
  --time-zone="Etc/UTC" \
  --http-method=POST \
  --uri="https://dataflow.googleapis.com/v1b3/projects/$PROJECT/locations/$REGION/flexTemplates:launch" \
  --headers="Content-Type=application/json" \
  --message-body-from-file="$(dirname "$0")/launch.json" \
  --oauth-service-account-email="$SCHEDULER_SA" \
  --oauth-token-scope="https://www.googleapis.com/auth/cloud-platform"
