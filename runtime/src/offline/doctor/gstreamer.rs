//! The `camera` check of a `source = "gstreamer"` board: every element the pipeline names is
//! installed, the appsink is there, and the package that provides a missing one.

use super::Check;
use crate::sources::camera::config::GstreamerConfig;

/// The Debian/Ubuntu (or JetPack) package that provides GStreamer element `name`, by the
/// plugin sets the elements a line's pipeline uses come from.
#[cfg_attr(not(feature = "gstreamer"), allow(dead_code))]
pub fn package_for(name: &str) -> &'static str {
    const CORE: &[&str] = &[
        "capsfilter",
        "fakesink",
        "fakesrc",
        "fdsrc",
        "filesink",
        "filesrc",
        "identity",
        "queue",
        "queue2",
        "tee",
        "multiqueue",
        "valve",
    ];
    const BASE: &[&str] = &[
        "appsink",
        "appsrc",
        "decodebin",
        "decodebin3",
        "parsebin",
        "playbin",
        "playbin3",
        "uridecodebin",
        "uridecodebin3",
        "urisourcebin",
        "videoconvert",
        "videorate",
        "videoscale",
        "videotestsrc",
        "videoconvertscale",
        "theoradec",
        "oggdemux",
        "tcpclientsrc",
    ];
    const GOOD: &[&str] = &[
        "v4l2src",
        "rtspsrc",
        "rtpjitterbuffer",
        "rtph264depay",
        "rtph265depay",
        "rtpjpegdepay",
        "udpsrc",
        "souphttpsrc",
        "jpegdec",
        "jpegenc",
        "pngdec",
        "pngenc",
        "avidemux",
        "avimux",
        "qtdemux",
        "qtmux",
        "mp4mux",
        "matroskademux",
        "matroskamux",
        "flvdemux",
        "multifilesrc",
        "multifilesink",
        "videocrop",
        "videoflip",
        "videobox",
        "deinterlace",
        "vp8dec",
        "vp8enc",
        "vp9dec",
        "imagefreeze",
    ];
    const BAD: &[&str] = &[
        "h264parse",
        "h265parse",
        "jpegparse",
        "tsdemux",
        "mpegtsmux",
        "openh264dec",
        "rtmpsrc",
        "srtsrc",
        "bayer2rgb",
    ];
    const UGLY: &[&str] = &["x264enc", "mpeg2dec", "mpegpsdemux"];
    if CORE.contains(&name) {
        "libgstreamer1.0-0 (GStreamer itself: reinstall it)"
    } else if BASE.contains(&name) {
        "gstreamer1.0-plugins-base"
    } else if GOOD.contains(&name) {
        "gstreamer1.0-plugins-good"
    } else if BAD.contains(&name) {
        "gstreamer1.0-plugins-bad"
    } else if UGLY.contains(&name) {
        "gstreamer1.0-plugins-ugly"
    } else if name.starts_with("avdec_")
        || name.starts_with("avenc_")
        || name.starts_with("avdemux_")
    {
        "gstreamer1.0-libav"
    } else if name.starts_with("nv") {
        // nvarguscamerasrc, nvvidconv, nvv4l2decoder, nvjpegdec…: JetPack's own plugins.
        "nvidia-l4t-gstreamer (JetPack; on a desktop these elements do not exist)"
    } else {
        "the plugin that provides it (`apt-file search` its name, or the vendor's SDK)"
    }
}

/// Build the pipeline without starting it (no device is opened, so this works while the
/// service runs) and say what is missing and which package provides it.
#[cfg(feature = "gstreamer")]
pub(super) fn check_pipeline(cfg: &GstreamerConfig) -> Check {
    use crate::sources::camera::gstreamer as gs;
    if let Err(gs::ParseFailure::Missing(names)) = gs::parse(&cfg.pipeline) {
        let fixes: Vec<String> = names
            .iter()
            .map(|n| format!("`{n}`: install {}", package_for(n)))
            .collect();
        return Check::fail(
            "camera",
            format!(
                "{}: GStreamer has no element {}",
                gs::KEY,
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!("{}; `gst-inspect-1.0 NAME` checks", fixes.join("; ")),
        );
    }
    match gs::elements(cfg) {
        Ok(names) => {
            let late = names.iter().any(|n| n.contains("decodebin") || n.starts_with("playbin"));
            Check::pass(
                "camera",
                format!(
                    "gstreamer: {} present, appsink `{}`{}",
                    names.join(", "),
                    cfg.sink,
                    if late {
                        " (decodebin picks its decoders when the stream starts: `diffad run` reports a missing one)"
                    } else {
                        ""
                    }
                ),
            )
        }
        Err(e) => Check::fail(
            "camera",
            e.to_string(),
            "fix camera.gstreamer.pipeline: try it with `gst-launch-1.0`, `appsink` replaced by `fakesink`",
        ),
    }
}

/// Without the `gstreamer` feature a pipeline cannot run: say so.
#[cfg(not(feature = "gstreamer"))]
pub(super) fn check_pipeline(_cfg: &GstreamerConfig) -> Check {
    Check::fail(
        "camera",
        "camera.source = \"gstreamer\": this build has no GStreamer support",
        "build with the `gstreamer` feature (default; needs libgstreamer1.0-dev and \
         libgstreamer-plugins-base1.0-dev)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_follow_the_plugin_sets() {
        assert_eq!(package_for("videoconvert"), "gstreamer1.0-plugins-base");
        assert_eq!(package_for("rtspsrc"), "gstreamer1.0-plugins-good");
        assert_eq!(package_for("avdec_h264"), "gstreamer1.0-libav");
        assert!(package_for("nvarguscamerasrc").starts_with("nvidia-l4t-gstreamer"));
        assert!(package_for("frobnicator").contains("apt-file"));
    }

    #[cfg(not(feature = "gstreamer"))]
    #[test]
    fn without_the_feature_doctor_and_run_refuse_a_pipeline_saying_why() {
        let cfg = GstreamerConfig {
            pipeline: "videotestsrc ! videoconvert ! appsink name=sink".into(),
            ..Default::default()
        };
        let c = check_pipeline(&cfg);
        assert_eq!(c.status, super::super::Status::Fail, "{c}");
        assert!(
            c.fix.as_deref().unwrap().contains("`gstreamer` feature"),
            "{c}"
        );
        let camera = crate::sources::camera::config::CameraConfig {
            source: crate::sources::camera::config::SourceKind::Gstreamer,
            gstreamer: cfg,
            ..Default::default()
        };
        let clock: std::sync::Arc<dyn crate::clock::Clock> =
            std::sync::Arc::new(crate::clock::SystemClock::new());
        match crate::sources::camera::open(&camera, 10.0, clock) {
            Err(crate::sources::camera::SourceError::Config(e)) => {
                assert!(e.contains("built without the `gstreamer` feature"), "{e}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened without GStreamer"),
        }
    }

    #[cfg(feature = "gstreamer")]
    #[test]
    fn a_missing_element_fails_with_its_package_and_a_whole_pipeline_passes() {
        let cfg = |p: &str| GstreamerConfig {
            pipeline: p.into(),
            ..Default::default()
        };
        let c = check_pipeline(&cfg(
            "nvarguscamerasrc sensor-id=0 ! nvvidconv ! videoconvert ! appsink name=sink",
        ));
        assert_eq!(c.status, super::super::Status::Fail, "{c}");
        assert!(c.detail.contains("`nvarguscamerasrc`"), "{c}");
        assert!(
            c.fix.as_deref().unwrap().contains("nvidia-l4t-gstreamer"),
            "{c}"
        );
        let c = check_pipeline(&cfg("videotestsrc ! videoconvert ! appsink name=sink"));
        assert_eq!(c.status, super::super::Status::Pass, "{c}");
        assert!(c.detail.contains("videotestsrc"), "{c}");
        let c = check_pipeline(&cfg("videotestsrc ! videoconvert ! fakesink"));
        assert_eq!(c.status, super::super::Status::Fail, "{c}");
        assert!(c.detail.contains("no appsink"), "{c}");
    }
}
