//! Checks against files written by the real `nix` (see `vectors/README.md`).
//!
//! These are the tests that catch a format that is self-consistent but not Nix's.

use ncps_nix::{
    CacheInfo, Compression, NarInfo, NarKey, PublicKey, SecretKey, Sha256Hash, StorePath,
    StorePathHash, nixbase32,
};

/// `(file name, contents)` of every narinfo `nix copy` wrote.
const NARINFOS: [(&str, &str); 8] = [
    (
        "xz/pgqv1zvc0hl7s4a9a90ljmd5pfp791m1.narinfo",
        include_str!("vectors/xz/pgqv1zvc0hl7s4a9a90ljmd5pfp791m1.narinfo"),
    ),
    (
        "xz/p5ja7622vyrdacmqcdlrf9z8w2d5w249.narinfo",
        include_str!("vectors/xz/p5ja7622vyrdacmqcdlrf9z8w2d5w249.narinfo"),
    ),
    (
        "xz/9hahfa88fckpm89c02h4gnpda586p1nz.narinfo",
        include_str!("vectors/xz/9hahfa88fckpm89c02h4gnpda586p1nz.narinfo"),
    ),
    (
        "xz/jxlj39xz9sdyyafc7d41fhmvl5gy5z5r.narinfo",
        include_str!("vectors/xz/jxlj39xz9sdyyafc7d41fhmvl5gy5z5r.narinfo"),
    ),
    (
        "zstd/pgqv1zvc0hl7s4a9a90ljmd5pfp791m1.narinfo",
        include_str!("vectors/zstd/pgqv1zvc0hl7s4a9a90ljmd5pfp791m1.narinfo"),
    ),
    (
        "zstd/p5ja7622vyrdacmqcdlrf9z8w2d5w249.narinfo",
        include_str!("vectors/zstd/p5ja7622vyrdacmqcdlrf9z8w2d5w249.narinfo"),
    ),
    (
        "zstd/9hahfa88fckpm89c02h4gnpda586p1nz.narinfo",
        include_str!("vectors/zstd/9hahfa88fckpm89c02h4gnpda586p1nz.narinfo"),
    ),
    (
        "zstd/jxlj39xz9sdyyafc7d41fhmvl5gy5z5r.narinfo",
        include_str!("vectors/zstd/jxlj39xz9sdyyafc7d41fhmvl5gy5z5r.narinfo"),
    ),
];

const SECRET_KEY: &str = include_str!("vectors/test-vector-1.sec");
const PUBLIC_KEY: &str = include_str!("vectors/test-vector-1.pub");
const HASHES: &str = include_str!("vectors/hashes.txt");
const CACHE_INFO: &str = include_str!("vectors/nix-cache-info");
const A_NAR: &[u8] = include_bytes!("vectors/a.nar");
const B_NAR: &[u8] = include_bytes!("vectors/b.nar");
const B_NAR_ZST_NAME: &str = "1cahc0pb3ly74240frql7rn3vd213sli3l8gqglxnryj6i5lwkmq.nar.zst";
const B_NAR_ZST: &[u8] =
    include_bytes!("vectors/1cahc0pb3ly74240frql7rn3vd213sli3l8gqglxnryj6i5lwkmq.nar.zst");

const A: &str = "/nix/store/pgqv1zvc0hl7s4a9a90ljmd5pfp791m1-ncps-vector-a";
const B: &str = "/nix/store/p5ja7622vyrdacmqcdlrf9z8w2d5w249-ncps-vector-b";
const C: &str = "/nix/store/9hahfa88fckpm89c02h4gnpda586p1nz-ncps-vector-c";
const CA: &str = "/nix/store/jxlj39xz9sdyyafc7d41fhmvl5gy5z5r-ca.txt";

fn parsed() -> Vec<(&'static str, &'static str, NarInfo)> {
    NARINFOS
        .iter()
        .map(|&(name, text)| {
            let info = NarInfo::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, text, info)
        })
        .collect()
}

fn find(dir: &str, path: &str) -> NarInfo {
    let hash = &path["/nix/store/".len()..][..32];
    let name = format!("{dir}/{hash}.narinfo");
    parsed()
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, info)| info)
        .unwrap()
}

fn sp(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

#[test]
fn render_reproduces_nix_byte_for_byte() {
    for (name, text, info) in parsed() {
        assert_eq!(info.render(), text, "{name}");
    }
}

#[test]
fn parsed_fields_match_what_nix_wrote() {
    for (name, _, info) in parsed() {
        let stem = name.split('/').nth(1).unwrap().trim_end_matches(".narinfo");
        assert_eq!(
            info.store_path.hash(),
            &StorePathHash::parse(stem).unwrap(),
            "{name}"
        );
        let want = if name.starts_with("xz/") {
            Compression::Xz
        } else {
            Compression::Zstd
        };
        assert_eq!(info.compression, want, "{name}");
        // Nix names the NAR file after its FileHash, which is what our NarKey assumes.
        let key = NarKey::parse_url(&info.url).unwrap();
        assert_eq!(Some(key.hash), info.file_hash, "{name}");
        assert_eq!(key.compression, info.compression, "{name}");
        assert_eq!(key.url(), info.url, "{name}");
        assert_eq!(info.sigs.len(), 1, "{name}");
    }

    let a = find("xz", A);
    assert!(a.references.is_empty());
    assert_eq!(a.nar_size, 288);
    assert_eq!(a.file_size, Some(168));
    assert_eq!(
        a.deriver.as_deref(),
        Some("25w22wsnlap0am8w3kd3ygk391qack88-ncps-vector-a.drv")
    );
    assert_eq!(a.ca, None);

    let b = find("xz", B);
    assert_eq!(b.references, vec![sp(A)]);
    let c = find("zstd", C);
    assert_eq!(c.references, vec![sp(C), sp(A)]);

    let ca = find("xz", CA);
    assert_eq!(ca.deriver, None);
    assert!(ca.references.is_empty());
    assert_eq!(
        ca.ca.as_deref(),
        Some("fixed:sha256:06h8a9gk1cq82dfl06p3wyqfhchkwbyzl4acakf3blxwmqy8ahh3")
    );
    // The flat CA hash is the SHA-256 of the file that was added.
    assert_eq!(
        Sha256Hash::digest(b"hello-ca\n").to_nix32(),
        "06h8a9gk1cq82dfl06p3wyqfhchkwbyzl4acakf3blxwmqy8ahh3"
    );
}

#[test]
fn nar_bytes_match_nar_and_file_hashes() {
    let a = find("xz", A);
    assert_eq!(Sha256Hash::digest(A_NAR), a.nar_hash);
    assert_eq!(A_NAR.len() as u64, a.nar_size);
    let b = find("zstd", B);
    assert_eq!(Sha256Hash::digest(B_NAR), b.nar_hash);
    assert_eq!(B_NAR.len() as u64, b.nar_size);
    assert_eq!(Some(Sha256Hash::digest(B_NAR_ZST)), b.file_hash);
    assert_eq!(Some(B_NAR_ZST.len() as u64), b.file_size);
    let key = NarKey::new(Sha256Hash::digest(B_NAR_ZST), Compression::Zstd);
    assert_eq!(key.file_name(), B_NAR_ZST_NAME);
    // Recompressing does not change the NAR hash, so both caches carry the same fingerprint.
    assert_eq!(find("xz", B).fingerprint(), b.fingerprint());
}

#[test]
fn keys_round_trip_nix_format() {
    let sk = SecretKey::parse(SECRET_KEY).unwrap();
    assert_eq!(sk.name(), "test-vector-1");
    assert_eq!(sk.to_nix_string(), SECRET_KEY.trim());
    assert_eq!(sk.public_key().to_nix_string(), PUBLIC_KEY.trim());
    assert_eq!(PublicKey::parse(PUBLIC_KEY).unwrap(), sk.public_key());
}

#[test]
fn our_signature_equals_nix_signature() {
    let sk = SecretKey::parse(SECRET_KEY).unwrap();
    for (name, text, info) in parsed() {
        // ed25519 is deterministic: same key and fingerprint give the same signature.
        assert_eq!(sk.sign(&info.fingerprint()), info.sigs[0], "{name}");
        let mut resigned = info.clone();
        resigned.sigs.clear();
        resigned.sign(&sk);
        assert_eq!(resigned.render(), text, "{name}");
    }
}

#[test]
fn nix_signature_verifies_and_tampering_is_caught() {
    let pk = PublicKey::parse(PUBLIC_KEY).unwrap();
    for (name, _, info) in parsed() {
        let fingerprint = info.fingerprint();
        assert!(pk.verify(&fingerprint, &info.sigs[0]), "{name}");
        assert!(info.verify(std::slice::from_ref(&pk)), "{name}");

        for tampered in [
            fingerprint.replacen("1;", "2;", 1),
            fingerprint.replace(";sha256:", ";sha256:0"),
            format!("{fingerprint},{CA}"),
        ] {
            assert_ne!(tampered, fingerprint);
            assert!(!pk.verify(&tampered, &info.sigs[0]), "{name}");
        }

        let mut bigger = info.clone();
        bigger.nar_size += 1;
        assert!(!bigger.verify(std::slice::from_ref(&pk)), "{name}");
        let mut extra_ref = info.clone();
        extra_ref.references.push(sp(CA));
        assert!(!extra_ref.verify(std::slice::from_ref(&pk)), "{name}");
    }
    let other = SecretKey::generate("test-vector-1").unwrap().public_key();
    assert!(!find("xz", B).verify(&[other]));
}

#[test]
fn hashes_agree_with_nix_hash() {
    let mut lines = 0;
    for line in HASHES.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [what, hex, nix32, sri] = fields[..] else {
            panic!("bad line {line:?}");
        };
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(nixbase32::encode(&bytes), nix32, "{what}");
        assert_eq!(nixbase32::decode(nix32).unwrap(), bytes, "{what}");
        let h = Sha256Hash::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(h.to_nix32(), nix32, "{what}");
        assert_eq!(Sha256Hash::parse(sri).unwrap(), h, "{what}");
        assert_eq!(Sha256Hash::parse_nix32(nix32).unwrap(), h, "{what}");
        lines += 1;
    }
    assert_eq!(lines, 4);
    assert_eq!(
        Sha256Hash::digest(b"").to_nix32(),
        "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
    );
}

#[test]
fn nix_cache_info_from_nix_copy() {
    let info = CacheInfo::parse(CACHE_INFO).unwrap();
    assert_eq!(info.store_dir, "/nix/store");
    assert!(!info.want_mass_query);
    assert_eq!(info.priority, None);
}
