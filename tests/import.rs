//! `deorch import` against the real `qemu-img`: a raw disk of known data,
//! converted by qemu-img into every format the import reads, comes out of
//! the import byte for byte; an OVA built here (OVF, manifest, two
//! streamOptimized disks, two NICs) gives one Spacesuit holding its CPUs,
//! memory, both disks and both NICs; damaged or foreign input is refused
//! with its name; an imported Spacesuit gives a real node's VM its disk;
//! and a VM made from a Spacesuit with two imported disks and a NIC gets
//! both disks as its own volumes and the NIC, in a real QEMU.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{cli_in, temp_dir};
use deorch::model::{AnyObject, Cpu, Quantity};
use sha2::{Digest, Sha256};

/// qemu-img must be installed in CI; elsewhere a test says loudly it skipped.
fn qemu_img_available() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "qemu-img is missing and CI=true: install qemu-utils (scripts/test.sh does)"
        );
        eprintln!("\n!!!!!! SKIPPED: qemu-img not installed (qemu-utils) !!!!!!\n");
    }
    ok
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw disk of `mib` MiB holding `seed`'s pseudo-random bytes in the
/// regions `data` (MiB ranges), zeros elsewhere; its bytes.
fn known_disk(path: &Path, mib: u64, data: &[(u64, u64)], seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; (mib << 20) as usize];
    let mut rng = common::Rng(seed);
    for &(from, to) in data {
        for chunk in bytes[(from << 20) as usize..(to << 20) as usize].chunks_exact_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
    }
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// The guest-visible bytes of an image, read back by qemu-img.
fn read_back(img: &Path, format: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join("read-back.raw");
    let _ = std::fs::remove_file(&out);
    run(Command::new("qemu-img")
        .args(["convert", "-f", format, "-O", "raw"])
        .arg(img)
        .arg(&out));
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    b
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn import(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    cli_in(None, &all, None)
}

/// The Spacesuits (and only they) of YAML `text`, parsed by deorch's own
/// manifest reader (so they validate).
fn spacesuits(text: &str) -> Vec<deorch::model::Manifest<deorch::model::SpacesuitSpec>> {
    let parsed = deorch::manifest::parse_str(Path::new("import.yaml"), text);
    assert!(
        parsed.diagnostics.is_empty(),
        "{:?}\n{text}",
        parsed.diagnostics
    );
    parsed
        .documents
        .into_iter()
        .map(|d| match d.object {
            AnyObject::Spacesuit(s) => s,
            other => panic!("not a Spacesuit: {other:?}"),
        })
        .collect()
}

/// Compare bytes without printing megabytes on failure.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[test]
fn every_format_comes_out_of_the_import_byte_for_byte() {
    if !qemu_img_available() {
        return;
    }
    let dir = temp_dir("import-formats");
    let raw = dir.join("known.raw");
    // Data at the start, in the middle and near the end; zeros between.
    let want = known_disk(&raw, 24, &[(0, 2), (5, 8), (20, 22)], 7);
    let images = dir.join("images");
    let formats: &[(&str, &str, &[&str])] = &[
        ("vmdk", "vmdk", &[]),
        ("stream.vmdk", "vmdk", &["-o", "subformat=streamOptimized"]),
        // force_size: the VHD keeps the exact size instead of a CHS one.
        ("vhd", "vpc", &["-o", "force_size=on"]),
        ("vhdx", "vhdx", &[]),
        ("qcow2", "qcow2", &[]),
        ("raw", "raw", &[]),
    ];
    for (i, (ext, format, opts)) in formats.iter().enumerate() {
        let src = dir.join(format!("disk.{ext}"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", format])
            .args(*opts)
            .arg(&raw)
            .arg(&src));
        let name = format!("suit{i}");
        let (code, out, err) = import(&[
            src.to_str().unwrap(),
            "--spacesuit",
            &name,
            "--images",
            images.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{ext}: {err}");
        let suits = spacesuits(&out);
        assert_eq!(suits.len(), 1, "{out}");
        let img = suits[0]
            .spec
            .source
            .as_ref()
            .unwrap()
            .image
            .clone()
            .unwrap();
        assert_eq!(
            PathBuf::from(&img.path),
            images.join(format!("default/{name}.qcow2"))
        );
        assert_eq!(
            img.format,
            Some(deorch::model::spacesuit::ImageFormat::Qcow2)
        );
        assert_eq!(
            img.sha256.as_deref(),
            Some(sha256_file(Path::new(&img.path)).as_str()),
            "{ext}: the spacesuit names the image's SHA-256"
        );
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&img.path)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2", "{ext}");
        assert_same(
            &read_back(Path::new(&img.path), "qcow2", &dir),
            &want,
            &format!("{ext} imported"),
        );
        let source = &suits[0].metadata.annotations.as_ref().unwrap()["import.deorch.dev/source"];
        let shown = if *format == "vpc" { "vhd" } else { format };
        assert!(source.contains(shown), "{ext}: {source}");
        if ext.contains("stream") {
            assert!(source.contains("streamOptimized"), "{source}");
        }
    }
    // Raw out, for zfs storage, unhashed; an existing image is kept
    // without --force.
    let src = dir.join("disk.vhdx");
    let (code, out, err) = import(&[
        src.to_str().unwrap(),
        "--spacesuit",
        "asraw",
        "--images",
        images.to_str().unwrap(),
        "--to",
        "raw",
        "--no-sha256",
    ]);
    assert_eq!(code, 0, "{err}");
    let img = spacesuits(&out)[0]
        .spec
        .source
        .clone()
        .unwrap()
        .image
        .unwrap();
    assert!(img.path.ends_with("/default/asraw.raw"), "{}", img.path);
    assert_eq!(img.sha256, None, "--no-sha256 leaves the hash out");
    assert_same(&std::fs::read(&img.path).unwrap(), &want, "raw out");
    let (code, _, err) = import(&[
        src.to_str().unwrap(),
        "--spacesuit",
        "asraw",
        "--images",
        images.to_str().unwrap(),
        "--to",
        "raw",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("asraw.raw exists already: pass --force"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:id="file1" ovf:href="app-disk1.vmdk"/>
    <File ovf:id="file2" ovf:href="app-disk2.vmdk"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk2" ovf:fileRef="file2" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>front</Description></Network>
    <Network ovf:name="Backend"><Description>back</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="app">
    <Info>A virtual machine</Info>
    <Name>app</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType></System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>CPUS</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>512MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>512</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:ElementName>SATA controller 0</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 2</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:Parent>4</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>00:50:56:AB:CD:01</rasd:Address>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>8</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>Backend</rasd:Connection>
        <rasd:ElementName>Network adapter 2</rasd:ElementName>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

/// An OVA in `dir`: the OVF (with `cpus` as its CPU count), a manifest
/// (`.mf`, SHA256 lines; `tamper` changes the second disk's digest) and
/// two streamOptimized disks of known data. Returns the OVA and the two
/// disks' bytes.
fn build_ova(dir: &Path, cpus: &str, tamper: bool) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let d1 = known_disk(&dir.join("d1.raw"), 8, &[(0, 3), (6, 7)], 11);
    let d2 = known_disk(&dir.join("d2.raw"), 4, &[(1, 2)], 12);
    for (raw, vmdk) in [("d1.raw", "app-disk1.vmdk"), ("d2.raw", "app-disk2.vmdk")] {
        run(Command::new("qemu-img")
            .args([
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .arg(dir.join(raw))
            .arg(dir.join(vmdk)));
    }
    std::fs::write(dir.join("app.ovf"), OVF.replace("CPUS", cpus)).unwrap();
    let mut mf = String::new();
    for f in ["app.ovf", "app-disk1.vmdk", "app-disk2.vmdk"] {
        let mut h = sha256_file(&dir.join(f));
        if tamper && f == "app-disk2.vmdk" {
            h = "0".repeat(64);
        }
        mf.push_str(&format!("SHA256({f})= {h}\n"));
    }
    std::fs::write(dir.join("app.mf"), mf).unwrap();
    let ova = dir.join("app.ova");
    // The OVF first, then the manifest and the disks (DSP0243's order).
    run(Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--format=ustar", "-cf"])
        .arg(&ova)
        .args(["app.ovf", "app.mf", "app-disk1.vmdk", "app-disk2.vmdk"]));
    (ova, d1, d2)
}

/// The VirtualMachine the import leaves as a comment, uncommented.
fn commented_vm(text: &str) -> deorch::model::Manifest<deorch::model::VirtualMachineSpec> {
    let start = text
        .find("# apiVersion:")
        .unwrap_or_else(|| panic!("no commented VM in\n{text}"));
    let yaml: String = text[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l).to_string() + "\n")
        .collect();
    let parsed = deorch::manifest::parse_str(Path::new("vm.yaml"), &yaml);
    assert!(
        parsed.diagnostics.is_empty(),
        "{:?}\n{yaml}",
        parsed.diagnostics
    );
    match parsed.documents.into_iter().next().unwrap().object {
        AnyObject::VirtualMachine(vm) => vm,
        other => panic!("not a VM: {other:?}"),
    }
}

#[test]
fn an_ova_gives_a_spacesuit_with_its_cpus_memory_disks_and_nics() {
    if !qemu_img_available() {
        return;
    }
    let dir = temp_dir("import-ova");
    let (ova, d1, d2) = build_ova(&dir, "2", false);
    let images = dir.join("images");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let (code, out, err) = import(&[
        ova.to_str().unwrap(),
        "--spacesuit",
        "app",
        "--namespace",
        "shop",
        "--images",
        images.to_str().unwrap(),
        "--manifests",
        manifests.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "with --manifests nothing is printed: {out}");
    let written = manifests.join("app.yaml");
    let text = std::fs::read_to_string(&written).unwrap();
    // deorch validate accepts the file as the node will read it.
    let (code, vout, verr) = cli_in(None, &["validate", written.to_str().unwrap()], None);
    assert_eq!(code, 0, "{vout}{verr}");

    let suits = spacesuits(&text);
    assert_eq!(suits.len(), 1, "one spacesuit holds the appliance:\n{text}");
    let app = &suits[0];
    assert_eq!(app.metadata.name.as_deref(), Some("app"));
    assert_eq!(app.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(app.spec.cpu, Some(Cpu(2000)), "2 CPUs from the OVF");
    assert_eq!(app.spec.memory, Some(Quantity(512 << 20)), "512 MiB");
    // Both disks: the first as spec.source, the second in spec.disks, each
    // on the bus of its OVF controller, their bytes those of the disks.
    let source = app.spec.source.clone().unwrap();
    let bus = |b: Option<deorch::model::vm::DiskBus>| {
        b.map(|b| {
            serde_json::to_value(b)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
    };
    assert_eq!(bus(source.bus).as_deref(), Some("scsi"), "SCSI lsilogic");
    assert_eq!(app.spec.disks.len(), 1, "{text}");
    assert_eq!(app.spec.disks[0].name, "disk2");
    assert_eq!(bus(app.spec.disks[0].bus).as_deref(), Some("sata"), "AHCI");
    for (img, want, member) in [
        (source.image.clone().unwrap(), &d1, "app-disk1.vmdk"),
        (app.spec.disks[0].image.clone(), &d2, "app-disk2.vmdk"),
    ] {
        assert!(
            img.path.starts_with(images.to_str().unwrap()),
            "{}",
            img.path
        );
        assert_eq!(img.sha256.unwrap(), sha256_file(Path::new(&img.path)));
        assert_same(
            &read_back(Path::new(&img.path), "qcow2", &dir),
            want,
            member,
        );
    }
    let notes = app.metadata.annotations.as_ref().unwrap();
    let source_note = &notes["import.deorch.dev/source"];
    assert!(
        source_note.contains("root: ")
            && source_note.contains("app.ova:app-disk1.vmdk (vmdk streamOptimized); disk2: ")
            && source_note.ends_with("app.ova:app-disk2.vmdk (vmdk streamOptimized)"),
        "{source_note}"
    );
    assert!(
        !notes.contains_key("import.deorch.dev/disks"),
        "every disk is in the spec: {notes:?}"
    );
    // Both NICs in spec.nics: networks named as the OVF's made DNS labels,
    // the emulated card kept, VMware's vmxnet3 as virtio; only what the
    // spec cannot hold (a fixed MAC, the original names) in the notes.
    let ns: Vec<(String, String, Option<String>, Option<String>)> = app
        .spec
        .nics
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.network.clone(),
                n.model.map(|m| m.as_str().to_string()),
                n.mac.clone(),
            )
        })
        .collect();
    assert_eq!(
        ns,
        [
            (
                "nic0".into(),
                "vm-network".into(),
                Some("e1000".into()),
                None
            ),
            ("nic1".into(), "backend".into(), None, None),
        ]
    );
    let nics = &notes["import.deorch.dev/nics"];
    assert_eq!(
        nics,
        "nic0: OVF network \"VM Network\", mac 00:50:56:ab:cd:01 not kept; nic1: OVF network \"Backend\", was VmxNet3"
    );
    // The VM left as a comment is made from it, and validates uncommented.
    let vm = commented_vm(&text);
    assert_eq!(vm.spec.spacesuit.as_deref(), Some("app"));
    assert!(vm.spec.disks.is_empty() && vm.spec.nics.is_empty());
    // The same OVF unpacked beside its disks imports the same way.
    let (code, out, err) = import(&[
        dir.join("app.ovf").to_str().unwrap(),
        "--spacesuit",
        "unpacked",
        "--images",
        images.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let suits = spacesuits(&out);
    assert_eq!(suits.len(), 1);
    assert_eq!(suits[0].spec.cpu, Some(Cpu(2000)));
    assert_eq!(suits[0].spec.nics.len(), 2);
    let img = suits[0].spec.disks[0].image.clone();
    assert_same(
        &read_back(Path::new(&img.path), "qcow2", &dir),
        &d2,
        "unpacked disk2",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_or_foreign_input_is_refused_with_its_name() {
    if !qemu_img_available() {
        return;
    }
    let dir = temp_dir("import-bad");
    let images = dir.join("images");
    let img = images.to_str().unwrap().to_string();
    let refused = |file: &Path, extra: &[&str], wants: &[&str]| {
        let mut args = vec![
            file.to_str().unwrap(),
            "--spacesuit",
            "bad",
            "--images",
            &img,
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = import(&args);
        assert_ne!(code, 0, "{} was imported: {out}", file.display());
        for w in wants {
            assert!(
                err.contains(w),
                "{}: expected {w:?} in: {err}",
                file.display()
            );
        }
        // Nothing is left in the image directory, not even a part file.
        let left: Vec<_> = std::fs::read_dir(images.join("default"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    };

    // A digest in the OVA's manifest that does not match its disk.
    let tampered = dir.join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    let (ova, _, _) = build_ova(&tampered, "2", true);
    refused(
        &ova,
        &[],
        &[
            "app.ova:app-disk2.vmdk: SHA256 is ",
            "the package's manifest (.mf) says 0000",
        ],
    );
    // An OVF whose CPU count is not a number: the element and its line.
    let bad_ovf = dir.join("badovf");
    std::fs::create_dir_all(&bad_ovf).unwrap();
    let (ova, _, _) = build_ova(&bad_ovf, "two", false);
    let line = OVF.lines().position(|l| l.contains("CPUS")).unwrap();
    refused(
        &ova,
        &[],
        &[
            "app.ova:app.ovf:",
            "Item (ResourceType 3, CPU): VirtualQuantity \"two\" is not a whole number",
        ],
    );
    // The error points at the CPU's Item, 5 lines above its VirtualQuantity.
    let (_, _, err) = import(&[ova.to_str().unwrap(), "--spacesuit", "x", "--images", &img]);
    assert!(err.contains(&format!("app.ovf:{}:", line + 1 - 5)), "{err}");
    // An OVA that is not a tar archive, and one whose disk is missing.
    let fake = dir.join("fake.ova");
    std::fs::write(&fake, OVF).unwrap();
    refused(&fake, &[], &["fake.ova: named .ova but not a tar archive"]);
    let partial = dir.join("partial.ova");
    std::fs::write(bad_ovf.join("app.ovf"), OVF.replace("CPUS", "2")).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&bad_ovf)
        .args(["--format=ustar", "-cf"])
        .arg(&partial)
        .args(["app.ovf", "app-disk1.vmdk"]));
    refused(
        &partial,
        &[],
        &["partial.ova: the OVF's file \"file2\" (href \"app-disk2.vmdk\", disk \"vmdisk2\") is not in the archive"],
    );
    // A file named as a format it is not, and a format deorch does not read.
    let junk = dir.join("junk.vhdx");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    refused(
        &junk,
        &[],
        &["junk.vhdx: named .vhdx but qemu-img finds no vhdx header"],
    );
    let qed = dir.join("disk.qed");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qed"])
        .arg(&qed)
        .arg("1M"));
    refused(&qed, &[], &["disk.qed: format \"qed\" is not imported"]);
    // A vmdk cut short: qemu-img's own words, with the file's name.
    let raw = dir.join("k.raw");
    known_disk(&raw, 4, &[(0, 4)], 3);
    let cut = dir.join("cut.vmdk");
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(&raw)
        .arg(&cut));
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    refused(&cut, &[], &["cut.vmdk: qemu-img "]);
    // A name that is not a DNS label.
    let (code, _, err) = import(&[
        raw.to_str().unwrap(),
        "--spacesuit",
        "Bad_Name",
        "--images",
        &img,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("spacesuit name \"Bad_Name\": expected a DNS-1123 label"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The serial text of a boot of VM `name` that reached the ready marker.
/// A TCG guest starved of CPU can stay silent for tens of seconds: after
/// 30 s without the marker its QEMU is killed and the VM's restart policy
/// boots it again (three tries), as tests/qemu_node.rs does.
fn ready_serial(node: &common::Node, name: &str) -> String {
    use std::time::{Duration, Instant};
    let serial = node.state.join(format!("vms/default/{name}/serial.log"));
    let pid = |n: &common::Node| {
        n.record("vm", name)
            .and_then(|r| r.status)
            .and_then(|s| s["pid"].as_u64())
    };
    for attempt in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            if text.contains("DEORCH-GUEST-READY") {
                return text;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let Some(old) = pid(node) else {
            continue;
        };
        eprintln!("boot attempt {attempt}: no ready marker in 30 s; killing QEMU {old}");
        let _ = Command::new("kill").args(["-9", &old.to_string()]).status();
        node.wait_for("a new boot", |n| pid(n).is_some_and(|p| p != old));
    }
    panic!(
        "the guest printed no ready marker in three boots; node log:\n{}",
        node.log_text()
    );
}

#[test]
fn an_imported_spacesuit_gives_a_real_vm_its_disk() {
    if !qemu_img_available() || !common::qemu_available() {
        return;
    }
    let (mut node, g) = common::qemu_node("import-vm");
    // A 4 MiB disk of known data, as a VHDX from another hypervisor.
    let raw = node.dir.join("data.raw");
    let want = known_disk(&raw, 4, &[(0, 1), (3, 4)], 21);
    let vhdx = node.dir.join("data.vhdx");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx"])
        .arg(&raw)
        .arg(&vhdx));
    let images = node.dir.join("images");
    let (code, _, err) = import(&[
        vhdx.to_str().unwrap(),
        "--spacesuit",
        "data",
        "--images",
        images.to_str().unwrap(),
        "--manifests",
        node.manifests.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        node.manifests.join("tiny.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  machine: microvm\n  cpu: 1\n  memory: 128Mi\n",
            k = g.join("vmlinuz").display(),
            i = g.join("initrd.img").display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
        ),
    )
    .unwrap();
    std::fs::write(
        node.manifests.join("vm.yaml"),
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: imported\nspec:\n  spacesuit: tiny\n  stopTimeout: 5s\n  disks:\n    - name: data\n      source: {spacesuit: data}\n",
    )
    .unwrap();
    node.start();
    // The node checks the image against the spacesuit's SHA-256 and
    // imports it; the VM's disk is a clone of it.
    node.wait_within(
        "spacesuit data Ready",
        std::time::Duration::from_secs(60),
        |n| {
            n.record("spacesuit", "data")
                .is_some_and(|r| r.status.is_some_and(|s| s["phase"] == "Ready"))
        },
    );
    let serial = ready_serial(&node, "imported");
    let head: String = want[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        serial.contains(&format!("deorch-guest: disk vda sectors=8192 head={head}")),
        "the guest reads the imported data on its disk: {serial}"
    );
}

/// The image path and SHA-256 `deorch import` made of `file` (printed
/// manifest, nothing written but the image).
fn imported_image(file: &Path, name: &str, images: &Path) -> (String, String) {
    let (code, out, err) = import(&[
        file.to_str().unwrap(),
        "--spacesuit",
        name,
        "--images",
        images.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let img = spacesuits(&out)[0]
        .spec
        .source
        .clone()
        .unwrap()
        .image
        .unwrap();
    (img.path, img.sha256.unwrap())
}

#[test]
fn a_real_vm_made_from_a_two_disk_spacesuit_gets_both_disks_and_its_nics() {
    if !qemu_img_available() || !common::qemu_available() {
        return;
    }
    let (mut node, g) = common::qemu_node("import-vm2");
    // Two disks of known data from another hypervisor, imported.
    let images = node.dir.join("images");
    let mut made = Vec::new();
    for (name, mib, data, seed) in [
        ("one", 4, &[(0, 1), (3, 4)][..], 31),
        ("two", 2, &[(0, 2)][..], 32),
    ] {
        let raw = node.dir.join(format!("{name}.raw"));
        let want = known_disk(&raw, mib, data, seed);
        let vhdx = node.dir.join(format!("{name}.vhdx"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vhdx"])
            .arg(&raw)
            .arg(&vhdx));
        let (path, sha) = imported_image(&vhdx, name, &images);
        made.push((path, sha, want));
    }
    std::fs::write(
        node.manifests.join("lan.yaml"),
        "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: lan\nspec:\n  mtu: 1500\n",
    )
    .unwrap();
    // One spacesuit: boot settings, the first disk, a further disk and a
    // NIC; the VM declares none of them.
    std::fs::write(
        node.manifests.join("tiny2.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny2}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  machine: microvm\n  cpu: 1\n  memory: 128Mi\n  source:\n    image: {{path: {p1}, format: qcow2, sha256: {h1}}}\n  disks:\n    - name: data\n      image: {{path: {p2}, format: qcow2, sha256: {h2}}}\n  nics:\n    - {{name: eth0, network: lan}}\n",
            k = g.join("vmlinuz").display(),
            i = g.join("initrd.img").display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
            p1 = made[0].0,
            h1 = made[0].1,
            p2 = made[1].0,
            h2 = made[1].1,
        ),
    )
    .unwrap();
    std::fs::write(
        node.manifests.join("vm.yaml"),
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: two\nspec:\n  spacesuit: tiny2\n  stopTimeout: 5s\n",
    )
    .unwrap();
    node.start();
    node.wait_within(
        "spacesuit tiny2 Ready with both volumes",
        std::time::Duration::from_secs(60),
        |n| {
            n.record("spacesuit", "tiny2").is_some_and(|r| {
                r.status.is_some_and(|s| {
                    s["phase"] == "Ready"
                        && s["volumes"]
                            == serde_json::json!(["suit-default-tiny2", "suit-default-tiny2.data"])
                })
            })
        },
    );
    let serial = ready_serial(&node, "two");
    let head = |b: &[u8]| -> String { b[..8].iter().map(|x| format!("{x:02x}")).collect() };
    for (dev, sectors, want) in [("vda", 8192, &made[0].2), ("vdb", 4096, &made[1].2)] {
        assert!(
            serial.contains(&format!(
                "deorch-guest: disk {dev} sectors={sectors} head={}",
                head(want)
            )),
            "the guest reads each spacesuit disk's data on its own disk ({dev}): {serial}"
        );
    }
    assert!(
        serial.contains("deorch-guest: lease "),
        "the NIC the VM inherits gets a lease: {serial}"
    );
    // Its own volumes, one per disk, and QEMU started with both and the NIC.
    let st = node.record("vm", "two").and_then(|r| r.status).unwrap();
    assert_eq!(
        st["disks"],
        serde_json::json!({"data": "vm-default-two-data", "root": "vm-default-two-root"}),
        "{st}"
    );
    assert!(st["nics"]["eth0"]["mac"].is_string(), "{st}");
    let pid = st["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    for want in [
        "vm-default-two-root",
        "vm-default-two-data",
        "netdev=net-eth0",
    ] {
        assert!(
            cmdline.contains(want),
            "QEMU's command line lacks {want}: {cmdline}"
        );
    }
}
