//! `deploy/kubernetes/`: the Kustomize manifests parsed and held to what a confidential
//! deployment needs: every pod in the Kata SEV-SNP runtime class, not privileged, no host
//! paths, the sealed model from a read-only volume, the key from the pod's Confidential
//! Data Hub, the KBS named in the pod's init data (and that annotation the encoding of
//! `initdata.toml`), readiness on `/ready`, and a TCP pass-through Service.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// YAML as JSON values, for plain indexing.
fn json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::String(s) | Yaml::Real(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), json(v)))
                .collect(),
        ),
        _ => Value::Null,
    }
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{file} is not YAML: {e}"))
        .iter()
        .map(json)
        .collect()
}

/// Every object the kustomization names, with the file it came from.
fn objects() -> (Value, Vec<(String, Value)>) {
    let kustomization = documents("kustomization.yaml").remove(0);
    let mut out = Vec::new();
    for file in kustomization["resources"].as_array().expect("resources") {
        let file = file.as_str().expect("a file name");
        out.extend(documents(file).into_iter().map(|d| (file.to_owned(), d)));
    }
    (kustomization, out)
}

#[test]
fn the_manifests_run_veil_server_replicas_confidentially() {
    let (kustomization, objects) = objects();
    assert_eq!(kustomization["kind"], "Kustomization");
    let of_kind = |kind: &str| -> Vec<&Value> {
        objects
            .iter()
            .filter(|(_, o)| o["kind"] == kind)
            .map(|(_, o)| o)
            .collect()
    };

    // No object anywhere mounts a host path or asks for privileges.
    for (file, object) in &objects {
        let text = object.to_string();
        assert!(!text.contains("hostPath"), "{file}: a hostPath");
        assert!(!text.contains("\"privileged\":true"), "{file}: privileged");
        assert!(!text.contains("hostNetwork"), "{file}: hostNetwork");
        assert!(!text.contains("hostPID"), "{file}: hostPID");
    }

    let deployments = of_kind("Deployment");
    assert_eq!(deployments.len(), 1);
    let deployment = deployments[0];
    assert!(
        deployment["spec"]["replicas"].as_i64().unwrap_or(0) > 1,
        "one replica is no scale-out"
    );
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["runtimeClassName"], "kata-qemu-snp");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);

    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--tee=snp"), "{args:?}");
    let broker = args
        .iter()
        .find_map(|a| a.strip_prefix("--key-broker="))
        .expect("a key broker");
    assert!(
        broker.starts_with("cdh:///"),
        "the key comes from the pod's data hub: {broker}"
    );
    let model = args
        .iter()
        .find_map(|a| a.strip_prefix("--model="))
        .expect("a model");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");

    // The sealed model comes from a read-only volume backed by a claim.
    let mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| model.starts_with(m["mountPath"].as_str().unwrap_or("-")))
        .expect("the model's directory is a mounted volume");
    assert_eq!(mount["readOnly"], true);
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume is declared");
    let claim = volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .expect("a claim");
    assert_eq!(volume["persistentVolumeClaim"]["readOnly"], true);
    assert!(
        of_kind("PersistentVolumeClaim")
            .iter()
            .any(|p| p["metadata"]["name"] == claim),
        "the claim {claim} is in the kustomization"
    );

    // The init data annotation is initdata.toml, and names the KBS the data hub asks.
    let annotation = pod["metadata"]["annotations"]
        ["io.katacontainers.config.hypervisor.cc_init_data"]
        .as_str()
        .expect("the init data annotation");
    let gzipped = base64::engine::general_purpose::STANDARD
        .decode(annotation)
        .expect("base64");
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&gzipped[..])
        .read_to_string(&mut decoded)
        .expect("gzip");
    let file = std::fs::read_to_string(dir().join("initdata.toml")).expect("initdata.toml");
    assert_eq!(
        decoded, file,
        "the annotation is not the encoding of initdata.toml"
    );
    let initdata: toml::Table = toml::from_str(&file).expect("initdata.toml parses");
    assert_eq!(
        initdata["algorithm"].as_str(),
        Some("sha256"),
        "SNP's HOST_DATA holds 32 bytes"
    );
    let cdh: toml::Table = toml::from_str(initdata["data"]["cdh.toml"].as_str().expect("cdh.toml"))
        .expect("cdh.toml parses");
    let kbs = cdh["kbc"]["url"].as_str().expect("the KBS URL");
    assert!(kbs.starts_with("http"), "{kbs}");

    // The Service passes TCP through to the pods' TLS port: nothing terminates TLS before.
    let services = of_kind("Service");
    assert_eq!(services.len(), 1);
    let service = services[0];
    assert_eq!(service["spec"]["selector"], pod["metadata"]["labels"]);
    for port in service["spec"]["ports"].as_array().expect("ports") {
        assert_eq!(port["protocol"], "TCP");
        assert_eq!(port["targetPort"], "https");
    }
    assert!(
        of_kind("Ingress").is_empty(),
        "an Ingress would end TLS outside the TEE"
    );
    assert_eq!(
        c["ports"][0]["name"], "https",
        "the Service's target port is the server's"
    );
}
