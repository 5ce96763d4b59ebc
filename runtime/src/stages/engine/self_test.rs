//! The engine's self-test: golden cases through the live session at start, with a CPU
//! fallback when the board allows it.

use super::*;

impl Engine {
    /// The self-test at start: refuse on failure, or with `engine.allow_fallback` re-create
    /// the session on the CPU provider and start only if the goldens pass there.
    pub(super) fn checked_start(&mut self) -> Result<(), EngineError> {
        let shown = self.path.display().to_string();
        match self.run_self_test() {
            Ok(r) => {
                log::info!("model {shown}: self-test {r}");
                self.self_test = Some(r);
                Ok(())
            }
            Err(e @ EngineError::SelfTest { .. })
                if self.config.allow_fallback && self.providers.iter().any(|p| p != "cpu") =>
            {
                log::error!("{e}");
                log::error!(
                    "model {shown}: falling back to the CPU provider as engine.allow_fallback allows; expect it to be much slower"
                );
                let mut cpu = self.config.clone();
                cpu.providers = vec!["cpu".into()];
                let bytes = std::fs::read(&self.path).map_err(|source| EngineError::Io {
                    path: shown.clone(),
                    source,
                })?;
                let sha = onnxfile::file_sha256(&bytes);
                let (session, providers) = open_session(&cpu, &bytes, &sha, self.lib, &shown)?;
                self.session = session;
                self.providers = providers;
                self.graph_sha256 = onnxfile::graph_sha256(&bytes);
                self.sha256 = sha;
                self.config = cpu;
                let r = self.run_self_test()?;
                log::warn!("model {shown}: self-test on the CPU fallback {r}");
                self.self_test = Some(r);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The golden file, its cases and their images, checked to belong to this model and to be
    /// at its input size.
    pub(super) fn golden_cases(
        &self,
    ) -> Result<(PathBuf, Goldens, Vec<crate::frame::Frame>), EngineError> {
        let model = self.path.display().to_string();
        let gpath = selftest::golden_json(&self.path);
        let golden = gpath.display().to_string();
        let missing = |golden: &str, reason: String| EngineError::GoldenMissing {
            model: model.clone(),
            golden: golden.to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&gpath).map_err(|e| missing(&golden, e.to_string()))?;
        let goldens: Goldens = serde_json::from_str(&text)
            .map_err(|e| missing(&golden, format!("not a golden file: {e}")))?;
        if goldens.cases.is_empty() {
            return Err(missing(&golden, "it lists no cases".into()));
        }
        let graph_sha = self.graph_sha256.clone();
        let want = goldens.model_sha256.to_ascii_lowercase();
        // The exporter hashes the graph without its metadata (calibration rewrites only the
        // manifest); a whole-file hash is accepted too.
        if graph_sha.as_deref() != Some(want.as_str()) && self.sha256 != want {
            let short = |s: &str| s.chars().take(12).collect::<String>();
            return Err(EngineError::GoldenForeign {
                model,
                golden,
                golden_sha: short(&want),
                model_sha: short(graph_sha.as_deref().unwrap_or(&self.sha256)),
            });
        }
        let base = gpath.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut frames = Vec::with_capacity(goldens.cases.len());
        for case in &goldens.cases {
            let p = base.join(&case.image);
            let frame = crate::sources::imagefile::load(&p)
                .map_err(|e| missing(&p.display().to_string(), e.reason))?;
            let i = &self.manifest.input;
            if (frame.width as usize, frame.height as usize) != (i.width, i.height) {
                // §5: golden inputs are at the model size, so no resize blurs the comparison.
                return Err(missing(
                    &p.display().to_string(),
                    format!(
                        "it is {}×{}, the model takes {}×{}",
                        frame.width, frame.height, i.width, i.height
                    ),
                ));
            }
            frames.push(frame);
        }
        Ok((gpath, goldens, frames))
    }

    /// Run the model's golden cases (`NAME.golden.json` + `NAME.golden/*.png`) through this
    /// session and compare score, map max, map mean and map sum with the tolerance. A sampler
    /// model runs them at the goldens' step count, then goes back to its own.
    pub fn run_self_test(&mut self) -> Result<SelfTestReport, EngineError> {
        let (gpath, goldens, frames) = self.golden_cases()?;
        let cases: Vec<&GoldenCase> = goldens.cases.iter().collect();
        let devs = self.check_at(goldens.sampler_steps, &cases, &frames)?;
        let (tolerance, from) = self.tolerance();
        Ok(SelfTestReport {
            golden: gpath,
            cases: goldens.cases.len(),
            max_deviation: devs,
            tolerance,
            tolerance_from: from,
            providers: self.providers.clone(),
        })
    }

    /// A sampler model's goldens at their other step counts (`more_steps`): the largest
    /// deviations per step count, or the self-test error of the first out of tolerance.
    pub fn check_more_steps(&mut self) -> Result<Vec<(usize, [f64; 4])>, EngineError> {
        let (_, goldens, frames) = self.golden_cases()?;
        let mut out = Vec::new();
        for more in &goldens.more_steps {
            let cases: Vec<&GoldenCase> = more.cases.iter().collect();
            if cases.len() != frames.len() {
                return Err(EngineError::GoldenMissing {
                    model: self.path.display().to_string(),
                    golden: selftest::golden_json(&self.path).display().to_string(),
                    reason: format!(
                        "more_steps {} lists {} cases for {} images",
                        more.steps,
                        cases.len(),
                        frames.len()
                    ),
                });
            }
            out.push((
                more.steps,
                self.check_at(Some(more.steps), &cases, &frames)?,
            ));
        }
        Ok(out)
    }

    /// The cases at `steps` (sampler models; the step count in use is restored after).
    fn check_at(
        &mut self,
        steps: Option<usize>,
        cases: &[&GoldenCase],
        frames: &[crate::frame::Frame],
    ) -> Result<[f64; 4], EngineError> {
        let before = self.sampler_steps();
        if let (Some(k), Some(_)) = (steps, before) {
            self.set_sampler_steps(k)?;
        }
        let result = self.compare_cases(cases, frames);
        if let Some(k) = before {
            self.set_sampler_steps(k)?;
        }
        result
    }

    fn compare_cases(
        &mut self,
        cases: &[&GoldenCase],
        frames: &[crate::frame::Frame],
    ) -> Result<[f64; 4], EngineError> {
        let model = self.path.display().to_string();
        let missing = |golden: &str, reason: String| EngineError::GoldenMissing {
            model: model.clone(),
            golden: golden.to_string(),
            reason,
        };
        let (tolerance, from) = self.tolerance();
        let mut pre = crate::stages::preprocess::Preprocessor::new(&self.manifest.input, None);
        let (batch, len) = (self.batch_size(), self.image_len());
        let mut devs = [0.0f64; 4];
        let mut first: Option<Deviation> = None;
        for (chunk, fchunk) in cases.chunks(batch).zip(frames.chunks(batch)) {
            for (slot, frame) in fchunk.iter().enumerate() {
                let out = &mut self.input[slot * len..(slot + 1) * len];
                pre.run(frame, out).map_err(|e| {
                    missing(&frame.origin, format!("does not fit the model input: {e}"))
                })?;
            }
            self.input[fchunk.len() * len..].fill(0.0);
            self.run_visit(chunk.len(), |b, score, map| {
                let (d, bad) = selftest::compare(chunk[b], score, map, tolerance, &from);
                for (acc, d) in devs.iter_mut().zip(d) {
                    *acc = acc.max(d);
                }
                if first.is_none() {
                    first = bad;
                }
            })?;
        }
        if let Some(deviation) = first {
            let gpu = self.providers.iter().any(|p| p != "cpu");
            let hint = if gpu && !self.config.allow_fallback {
                ". Rebuild the engine (`diffad build-engine`), check the driver, or set engine.allow_fallback = true to fall back to the CPU provider"
            } else {
                ". Its goldens may be stale (re-export the model) or this ONNX Runtime computes differently; engine.self_test.tolerance widens the check"
            };
            return Err(EngineError::SelfTest {
                model,
                providers: self.providers.join(" > "),
                deviation: Box::new(deviation),
                hint: hint.into(),
            });
        }
        Ok(devs)
    }

    /// The self-test tolerance and where it came from: the board file, else the manifest's
    /// `self_test.tolerance`, else the precision's default (an fp16 graph, or an fp16 TensorRT
    /// engine, gets the fp16 one).
    pub fn tolerance(&self) -> (f64, String) {
        if let Some(t) = self.config.self_test.tolerance {
            return (t, "engine.self_test.tolerance".into());
        }
        if let Some(t) = self
            .manifest
            .self_test
            .as_ref()
            .and_then(|s| s.get("tolerance"))
            .and_then(|t| t.as_f64())
            .filter(|t| t.is_finite() && *t >= 0.0)
        {
            return (t, "manifest self_test.tolerance".into());
        }
        let precision = self
            .manifest
            .architecture
            .get("precision")
            .and_then(|p| p.as_str())
            .unwrap_or("fp32");
        if precision == "fp16" {
            (FP16_TOLERANCE, "fp16 model default".into())
        } else if self.config.tensorrt.fp16 && self.providers.iter().any(|p| p == "tensorrt") {
            (FP16_TOLERANCE, "TensorRT fp16 engine default".into())
        } else {
            (FP32_TOLERANCE, format!("{precision} default"))
        }
    }
}
