//! `portpool call`: one call on a fresh one-worker pool.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use portpool::{CallError, CallRequest, Pool, PoolError, ProcessLauncher, Value, WorkerCommand};

use crate::json;

pub(crate) struct CallArgs {
    pub app: PathBuf,
    pub python: PathBuf,
    pub session: Option<String>,
    pub timeout: Option<f64>,
    pub stream: bool,
    pub method: String,
    pub params: Option<String>,
}

pub(crate) async fn run(args: CallArgs) -> ExitCode {
    let params = match parse_params(args.params.as_deref()) {
        Ok(params) => params,
        Err(e) => {
            eprintln!("portpool call: {e}");
            return ExitCode::from(2);
        }
    };
    let mut request = CallRequest::new(args.method, params);
    request.session = args.session;
    if let Some(secs) = args.timeout {
        match Duration::try_from_secs_f64(secs) {
            Ok(timeout) if !timeout.is_zero() => request.timeout = Some(timeout),
            _ => {
                eprintln!("portpool call: --timeout must be a positive number of seconds, got {secs}");
                return ExitCode::from(2);
            }
        }
    }

    let command = WorkerCommand::python_with(&args.python, &args.app);
    let pool = match Pool::builder(ProcessLauncher::new(command))
        .name("call")
        .workers(1)
        .heartbeat(None)
        .build()
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("portpool call: the worker did not start: {e}");
            eprintln!(
                "hint: run `portpool doctor --app {}` for a diagnosis",
                args.app.display()
            );
            return ExitCode::FAILURE;
        }
    };

    let outcome = if args.stream {
        stream(&pool, request).await
    } else {
        pool.call_raw(request).await.map(|value| print_json(&value, true))
    };
    pool.shutdown(Duration::from_secs(2)).await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e);
            ExitCode::FAILURE
        }
    }
}

async fn stream(pool: &Pool, request: CallRequest) -> Result<(), PoolError> {
    let mut chunks = pool.stream(request).await?;
    while let Some(item) = chunks.next().await {
        print_json(&item?, false);
    }
    Ok(())
}

/// Parses the params argument: absent is `null`.
pub(crate) fn parse_params(text: Option<&str>) -> Result<Value, String> {
    let Some(text) = text else {
        return Ok(Value::Nil);
    };
    let parsed: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("params are not valid JSON ({e}): {text}"))?;
    json::to_msgpack(&parsed).map_err(|e| format!("params: {e}"))
}

fn print_json(value: &Value, pretty: bool) {
    let json = json::to_json(value);
    let text = if pretty {
        serde_json::to_string_pretty(&json)
    } else {
        serde_json::to_string(&json)
    };
    println!("{}", text.unwrap_or_else(|e| format!("<unprintable: {e}>")));
}

fn report_error(e: &PoolError) {
    match e {
        PoolError::Call(CallError::Remote { method, error, .. }) => {
            eprintln!("error: {method} raised {}: {}", error.kind, error.message);
            if let Some(data) = &error.data {
                eprintln!("data: {}", json::to_json(data));
            }
            if let Some(traceback) = &error.traceback {
                eprintln!("{}", traceback.trim_end());
            }
        }
        other => eprintln!("error ({}): {other}", other.outcome()),
    }
}
