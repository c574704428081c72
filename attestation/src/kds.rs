//! AMD's Key Distribution Service (KDS, AMD spec 57230): the paths that serve a report's
//! VCEK, a product's CRL and its ASK/ARK chain, and the layout of Veil's collateral cache.
//!
//! Pure: this module builds paths and decides whether cached bytes may be used; the
//! client does the HTTP and the file I/O (`client/src/kds.rs`), through
//! [`CollateralStore`].
//!
//! Paths (relative to the KDS base URL, default [`DEFAULT_KDS_URL`]):
//!
//! | what | path |
//! |---|---|
//! | VCEK (DER), Milan/Genoa | `/vcek/v1/{Milan,Genoa}/{hwid}?blSPL=BB&teeSPL=TT&snpSPL=SS&ucodeSPL=UU` |
//! | VCEK (DER), Turin | `/vcek/v1/Turin/{hwid}?fmcSPL=FF&blSPL=BB&teeSPL=TT&snpSPL=SS&ucodeSPL=UU` |
//! | CRL (DER) | `/vcek/v1/{product}/crl` |
//! | ASK then ARK (PEM) | `/vcek/v1/{product}/cert_chain` |
//!
//! `hwid` is the lowercase hex of the report's CHIP_ID: all 64 bytes on Milan and Genoa,
//! the first 8 on Turin. The SPLs are the components of REPORTED_TCB in decimal, at
//! least two digits (as snpguest and Trustee send them). KDS does not serve VLEKs by
//! hardware id: a VLEK-signed report needs its VLEK supplied.

use std::time::SystemTime;

use thiserror::Error;

use crate::chain::Certificate;
use crate::report::{Product, Report, SigningKey, Tcb};
use crate::revocation::Crl;

/// AMD's production KDS.
pub const DEFAULT_KDS_URL: &str = "https://kdsintf.amd.com";

/// Why no KDS path can be built, or why KDS bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KdsError {
    /// The report is signed by a VLEK.
    #[error(
        "the report is signed by a VLEK: AMD's KDS does not serve VLEKs by hardware id, so \
         the VLEK must be supplied (vlek.pem or vlek.der in the certs directory, or in the \
         evidence)"
    )]
    Vlek,
    /// The report is unsigned, or names a reserved signing key.
    #[error("the report's signing key is {0}: there is no VCEK to fetch")]
    NoVcek(SigningKey),
    /// CHIP_ID is all zero (the guest policy's MASK_CHIP_ID).
    #[error(
        "the report's CHIP_ID is zero (MASK_CHIP_ID): KDS cannot name its VCEK, which must be \
         supplied"
    )]
    MaskedChipId,
    /// A Turin report whose CHIP_ID carries bytes after the 8 of its hwid.
    #[error(
        "a Turin hwid is CHIP_ID[0..8], but this report's CHIP_ID[8..64] is not zero: is the \
         product right?"
    )]
    TurinChipId,
    /// The product has no KDS (the mock platform).
    #[error("product {0} has no AMD KDS")]
    NoKds(Product),
    /// A certificate from KDS or the cache is not the one the request names.
    #[error("the VCEK does not match the request: {0}")]
    Mismatch(String),
}

/// The product's path segment in KDS URLs.
///
/// # Errors
/// [`KdsError::NoKds`] for the mock platform.
pub fn product_segment(product: Product) -> Result<&'static str, KdsError> {
    match product {
        Product::Milan | Product::Genoa | Product::Turin => Ok(product.name()),
        Product::Mock => Err(KdsError::NoKds(product)),
    }
}

/// The product a report names: its CPUID bytes (v3+), or, for a v2 report whose
/// CHIP_ID[8..] is zero and CHIP_ID[..8] is not, Turin (as snpguest infers). `None` for
/// other v2 reports: Milan and Genoa cannot be told apart from the report alone.
pub fn report_product(report: &Report) -> Option<Product> {
    if let Some(p) = report.cpuid_product() {
        return Some(p);
    }
    let chip = report.chip_id();
    let (head, tail) = chip.split_at(8);
    (tail.iter().all(|&b| b == 0) && head.iter().any(|&b| b != 0)).then_some(Product::Turin)
}

/// The CRL path of `product`: `/vcek/v1/{product}/crl`.
///
/// # Errors
/// [`KdsError::NoKds`] for the mock platform.
pub fn crl_path(product: Product) -> Result<String, KdsError> {
    Ok(format!("/vcek/v1/{}/crl", product_segment(product)?))
}

/// The ASK/ARK chain path of `product`: `/vcek/v1/{product}/cert_chain`.
///
/// # Errors
/// [`KdsError::NoKds`] for the mock platform.
pub fn cert_chain_path(product: Product) -> Result<String, KdsError> {
    Ok(format!("/vcek/v1/{}/cert_chain", product_segment(product)?))
}

/// Joins a KDS base URL (`https://kdsintf.amd.com`, with or without a trailing `/`) and
/// a path from this module.
pub fn url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// Which VCEK a report needs: product, hardware id and reported TCB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcekRequest {
    product: Product,
    hwid: Vec<u8>,
    tcb: Tcb,
}

impl VcekRequest {
    /// The VCEK that certifies `report`, a report of `product`.
    ///
    /// # Errors
    /// [`KdsError::Vlek`] for a VLEK-signed report, [`KdsError::NoVcek`] for an unsigned
    /// one, [`KdsError::MaskedChipId`], [`KdsError::TurinChipId`], [`KdsError::NoKds`].
    pub fn from_report(report: &Report, product: Product) -> Result<Self, KdsError> {
        match report.signing_key() {
            SigningKey::Vcek => {}
            SigningKey::Vlek => return Err(KdsError::Vlek),
            other => return Err(KdsError::NoVcek(other)),
        }
        product_segment(product)?;
        let chip = report.chip_id();
        if chip.iter().all(|&b| b == 0) {
            return Err(KdsError::MaskedChipId);
        }
        let hwid = if product == Product::Turin {
            if chip[8..].iter().any(|&b| b != 0) {
                return Err(KdsError::TurinChipId);
            }
            chip[..8].to_vec()
        } else {
            chip.to_vec()
        };
        Ok(VcekRequest {
            product,
            hwid,
            tcb: Tcb::from_raw(report.reported_tcb_raw(), product),
        })
    }

    /// The product.
    pub fn product(&self) -> Product {
        self.product
    }

    /// The hardware id KDS names the chip by (64 bytes; 8 on Turin).
    pub fn hwid(&self) -> &[u8] {
        &self.hwid
    }

    /// The hardware id in lowercase hex.
    pub fn hwid_hex(&self) -> String {
        hex::encode(&self.hwid)
    }

    /// The reported TCB the VCEK must certify.
    pub fn tcb(&self) -> Tcb {
        self.tcb
    }

    /// The KDS path of this VCEK (see the module docs).
    pub fn path(&self) -> String {
        let t = &self.tcb;
        let fmc = match t.fmc {
            Some(fmc) if self.product == Product::Turin => format!("fmcSPL={fmc:02}&"),
            _ => String::new(),
        };
        format!(
            "/vcek/v1/{}/{}?{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
            self.product.name(),
            self.hwid_hex(),
            t.bootloader,
            t.tee,
            t.snp,
            t.microcode
        )
    }

    /// The directory, relative to the cache root, that holds this VCEK as `vcek.der`:
    /// `vcek/{product}/{hwid}/{tcb}`, where `{tcb}` is
    /// `bl{BB}_tee{TT}_snp{SS}_ucode{UU}` (Turin: `_fmc{FF}` appended), with
    /// `/` separators.
    pub fn cache_dir(&self) -> String {
        let t = &self.tcb;
        let mut tcb = format!(
            "bl{:02}_tee{:02}_snp{:02}_ucode{:02}",
            t.bootloader, t.tee, t.snp, t.microcode
        );
        if let (Product::Turin, Some(fmc)) = (self.product, t.fmc) {
            tcb.push_str(&format!("_fmc{fmc:02}"));
        }
        format!("vcek/{}/{}/{tcb}", self.product.name(), self.hwid_hex())
    }

    /// The cache key of this VCEK: [`Self::cache_dir`] then `/vcek.der`.
    pub fn cache_key(&self) -> String {
        format!("{}/vcek.der", self.cache_dir())
    }

    /// Checks that `vek` is the VCEK this request names: its hwID extension is the
    /// request's hardware id and its SPL extensions are the request's TCB. This is not
    /// a signature check; the chain is verified on every appraisal.
    ///
    /// # Errors
    /// [`KdsError::Mismatch`], naming what differs.
    pub fn check(&self, vek: &Certificate) -> Result<(), KdsError> {
        let hwid = vek
            .hardware_id()
            .ok_or_else(|| KdsError::Mismatch("it has no hwID extension".into()))?;
        if hwid != self.hwid.as_slice() {
            return Err(KdsError::Mismatch(format!(
                "its hwID is {}, the report's is {}",
                hex::encode(hwid),
                self.hwid_hex()
            )));
        }
        let tcb = vek
            .tcb(self.product)
            .ok_or_else(|| KdsError::Mismatch("it lacks an SPL extension".into()))?;
        if tcb != self.tcb {
            return Err(KdsError::Mismatch(format!(
                "it certifies TCB {tcb}, the report's is {}",
                self.tcb
            )));
        }
        Ok(())
    }
}

/// The cache key of `product`'s CRL: `crl/{product}/crl.der`.
pub fn crl_cache_key(product: Product) -> String {
    format!("crl/{}/crl.der", product.name())
}

/// The cache key of `product`'s ASK and ARK as KDS serves them:
/// `cert_chain/{product}/cert_chain.pem`.
pub fn cert_chain_cache_key(product: Product) -> String {
    format!("cert_chain/{}/cert_chain.pem", product.name())
}

/// Where cached collateral lives: keys are `/`-separated relative paths
/// ([`VcekRequest::cache_key`], [`crl_cache_key`]). The client implements it over a
/// directory; tests over a map.
pub trait CollateralStore {
    /// The bytes stored under `key`, or `None` if there are none.
    ///
    /// # Errors
    /// Any I/O error other than absence.
    fn get(&self, key: &str) -> std::io::Result<Option<Vec<u8>>>;
    /// Stores `bytes` under `key`, replacing what was there.
    ///
    /// # Errors
    /// Any I/O error.
    fn put(&self, key: &str, bytes: &[u8]) -> std::io::Result<()>;
}

/// A cached VCEK for `request`, if one is stored and is the certificate the request
/// names. VCEKs are kept forever: a (product, hwid, TCB) names one key. An entry that
/// does not parse or does not match is ignored (and will be overwritten by a fetch).
///
/// # Errors
/// The store's I/O errors.
pub fn cached_vcek(
    store: &dyn CollateralStore,
    request: &VcekRequest,
) -> std::io::Result<Option<Certificate>> {
    let Some(bytes) = store.get(&request.cache_key())? else {
        return Ok(None);
    };
    Ok(Certificate::from_der(&bytes)
        .ok()
        .filter(|c| request.check(c).is_ok()))
}

/// A cached CRL of `product` that is still current at `now` (before its nextUpdate; a
/// CRL without nextUpdate is never current). Whether it is signed by AMD is checked at
/// appraisal, as for any CRL.
///
/// # Errors
/// The store's I/O errors.
pub fn cached_crl(
    store: &dyn CollateralStore,
    product: Product,
    now: SystemTime,
) -> std::io::Result<Option<Crl>> {
    let Some(bytes) = store.get(&crl_cache_key(product))? else {
        return Ok(None);
    };
    Ok(Crl::from_pem_or_der(&bytes)
        .ok()
        .filter(|crl| crl_is_current(crl, now)))
}

/// Whether `crl` may still be used at `now`: `thisUpdate <= now < nextUpdate`.
pub fn crl_is_current(crl: &Crl, now: SystemTime) -> bool {
    crl.this_update() <= now && crl.next_update().is_some_and(|next| now < next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::REPORT_LEN;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A report with the given fields set (the rest zero): not signed, but the URL needs
    /// none of the signed-ness.
    fn report(version: u32, key_info: u32, tcb: u64, chip: &[u8]) -> Report {
        let mut raw = vec![0u8; REPORT_LEN];
        raw[0..4].copy_from_slice(&version.to_le_bytes());
        raw[0x34..0x38].copy_from_slice(&1u32.to_le_bytes()); // signature algo
        raw[0x48..0x4C].copy_from_slice(&key_info.to_le_bytes());
        raw[0x180..0x188].copy_from_slice(&tcb.to_le_bytes());
        raw[0x1A0..0x1A0 + chip.len()].copy_from_slice(chip);
        Report::from_bytes(&raw).expect("a well-formed report")
    }

    const VCEK: u32 = 0;
    const VLEK: u32 = 1 << 2;

    #[test]
    fn milan_url_names_the_whole_chip_id_and_two_digit_spls() {
        let tcb = Tcb {
            fmc: None,
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        let r = report(2, VCEK, tcb.to_raw(Product::Milan), &[0xAB; 64]);
        let req = VcekRequest::from_report(&r, Product::Milan).unwrap();
        assert_eq!(
            req.path(),
            format!(
                "/vcek/v1/Milan/{}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115",
                "ab".repeat(64)
            )
        );
        assert_eq!(
            req.cache_dir(),
            format!("vcek/Milan/{}/bl03_tee00_snp08_ucode115", "ab".repeat(64))
        );
        assert_eq!(req.cache_key(), format!("{}/vcek.der", req.cache_dir()));
        assert_eq!(
            url("https://kdsintf.amd.com/", &req.path()),
            format!("https://kdsintf.amd.com{}", req.path())
        );
    }

    #[test]
    fn turin_url_names_eight_bytes_and_an_fmc_spl_first() {
        let tcb = Tcb {
            fmc: Some(1),
            bootloader: 2,
            tee: 3,
            snp: 4,
            microcode: 5,
        };
        let mut chip = [0u8; 64];
        chip[..8].copy_from_slice(&[0x6b, 0xb1, 0x22, 0x9b, 0x76, 0x92, 0xb7, 0x10]);
        let r = report(5, VCEK, tcb.to_raw(Product::Turin), &chip);
        let req = VcekRequest::from_report(&r, Product::Turin).unwrap();
        assert_eq!(
            req.path(),
            "/vcek/v1/Turin/6bb1229b7692b710?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=05"
        );
        assert_eq!(
            req.cache_dir(),
            "vcek/Turin/6bb1229b7692b710/bl02_tee03_snp04_ucode05_fmc01"
        );
        // A v2 report shaped like this is taken for Turin.
        assert_eq!(report_product(&r), Some(Product::Turin));
        // A Turin report with bytes past the hwid is refused: the product is likely wrong.
        chip[20] = 1;
        let r = report(5, VCEK, tcb.to_raw(Product::Turin), &chip);
        assert_eq!(
            VcekRequest::from_report(&r, Product::Turin),
            Err(KdsError::TurinChipId)
        );
        assert_eq!(report_product(&r), None);
    }

    #[test]
    fn vlek_masked_unsigned_and_mock_reports_are_refused_with_the_reason() {
        let vlek = report(3, VLEK, 0, &[1; 64]);
        let err = VcekRequest::from_report(&vlek, Product::Milan).unwrap_err();
        assert_eq!(err, KdsError::Vlek);
        assert!(err.to_string().contains("VLEK must be supplied"));
        let masked = report(3, VCEK, 0, &[0; 64]);
        assert_eq!(
            VcekRequest::from_report(&masked, Product::Genoa),
            Err(KdsError::MaskedChipId)
        );
        let unsigned = report(3, 7 << 2, 0, &[1; 64]);
        assert_eq!(
            VcekRequest::from_report(&unsigned, Product::Genoa),
            Err(KdsError::NoVcek(SigningKey::None))
        );
        let ok = report(3, VCEK, 0, &[1; 64]);
        assert_eq!(
            VcekRequest::from_report(&ok, Product::Mock),
            Err(KdsError::NoKds(Product::Mock))
        );
        assert!(crl_path(Product::Mock).is_err());
    }

    #[test]
    fn crl_and_chain_paths() {
        assert_eq!(crl_path(Product::Genoa).unwrap(), "/vcek/v1/Genoa/crl");
        assert_eq!(
            cert_chain_path(Product::Turin).unwrap(),
            "/vcek/v1/Turin/cert_chain"
        );
        assert_eq!(crl_cache_key(Product::Milan), "crl/Milan/crl.der");
    }

    #[derive(Default)]
    struct MapStore(RefCell<BTreeMap<String, Vec<u8>>>);

    impl CollateralStore for MapStore {
        fn get(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
            Ok(self.0.borrow().get(key).cloned())
        }
        fn put(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
            self.0.borrow_mut().insert(key.to_owned(), bytes.to_vec());
            Ok(())
        }
    }

    #[test]
    fn a_cache_entry_that_is_not_the_requested_vcek_is_ignored() {
        let store = MapStore::default();
        let r = report(3, VCEK, 0, &[1; 64]);
        let req = VcekRequest::from_report(&r, Product::Milan).unwrap();
        assert!(cached_vcek(&store, &req).unwrap().is_none());
        store.put(&req.cache_key(), b"not a certificate").unwrap();
        assert!(cached_vcek(&store, &req).unwrap().is_none());
        // A mock VCEK carries another chip id: ignored too.
        let platform = crate::MockPlatform::generate(SystemTime::now()).unwrap();
        let der = platform.vcek().as_der().to_vec();
        store.put(&req.cache_key(), &der).unwrap();
        assert!(cached_vcek(&store, &req).unwrap().is_none());
        assert!(cached_crl(&store, Product::Milan, SystemTime::now())
            .unwrap()
            .is_none());
    }
}
